"""Micro-benchmark: policy decisions per second on a generated 200-rule policy.

Times ``Policy.route`` + ``Policy.authorize`` for a mix of request shapes (allowed,
denied, public, parametrized, :own, unmatched) in one process, on one core: with a fresh
id in every path (the route memo never hits, so this is the normalize + trie cost),
without and with tricky spellings (dot segments, escapes: the careful path), and with a
small set of repeated paths (memo hits). Target (issue 16): at least 300,000 decisions/s
with fresh ids on plain paths (issue 3 asked for 200,000), per second of one core's CPU
time (a shared machine's stolen moments do not count against the engine).

    python bench/policy_bench.py [--rules 200] [--seconds 2]

``policy_rows`` gives the same rows to other bench scripts (bench/run.py).
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from patgate.middleware.records import Identity
from patgate.policies.engine import Policy, parse_policy

__all__ = ["TARGET", "generate_policy", "policy_rows"]

#: decisions/s the "fresh ids, plain" row must reach (issue 16).
TARGET = 300_000
_RESOURCES = ("threads", "messages", "files", "projects", "comments")
_VERBS = (
    ("GET", "read", "/{id}"),
    ("PATCH", "update", "/{id}"),
    ("DELETE", "delete", "/{id}"),
    ("POST", "create", ""),
    ("GET", "list", ""),
)


def generate_policy(n_rules: int) -> str:
    """A policy of ``n_rules`` rules: public probes, per-service CRUD rules with
    workspace and :own bindings, prefixes, and a catch-all."""
    lines = ["version = 1", 'default = "deny"']

    def rule(name: str, body: str) -> None:
        lines.append(f'[[rules]]\nname = "{name}"\n{body}')

    rule("health", 'methods = ["GET"]\npath = "/healthz"\npublic = true')
    rule("docs", 'methods = ["GET"]\npath = "/docs/**"\npublic = true')
    rule("admin", 'path = "/admin/**"\nscopes = ["admin:admin"]')
    count = 3
    svc = 0
    while count < n_rules - 1:
        for res in _RESOURCES:
            for method, action, tail in _VERBS:
                if count >= n_rules - 1:
                    break
                path = f"/v1/svc{svc}/workspaces/{{ws}}/{res}{tail}"
                body = (
                    f'methods = ["{method}"]\npath = "{path}"\n'
                    f'scopes = ["{res}:{action}"]\nworkspace_param = "ws"'
                )
                rule(f"svc{svc}-{res}-{action}", body)
                count += 1
        if count < n_rules - 1:
            rule(
                f"svc{svc}-user",
                f'methods = ["GET"]\npath = "/v1/svc{svc}/users/{{user}}/**"\n'
                'scopes = ["profile:read"]\nown = "user"',
            )
            count += 1
        svc += 1
    rule("catch-all", 'methods = ["GET"]\npath = "/**"\nscopes = ["misc:read"]')
    return "\n".join(lines) + "\n"


# (method, path template with {n} for a varying id, tricky spelling?): allowed, denied,
# public, :own, prefix, catch-all, unmatched, and spellings that take the careful path.
_SHAPES = [
    ("GET", "/v1/svc3/workspaces/w1/threads/t-{n}", False),  # allow
    ("GET", "/v1/svc3/workspaces/w1/threads/T{n}xY", False),  # upper-case id: 2nd view
    ("PATCH", "/v1/svc5/workspaces/w1/messages/m-{n}", False),  # insufficient scope
    ("GET", "/v1/svc7/workspaces/w2/files/f-{n}", False),  # workspace denied
    ("POST", "/v1/svc1/workspaces/w1/threads", False),  # allow
    ("GET", "/v1/svc6/workspaces/w1/projects", False),  # allow (list)
    ("GET", "/v1/svc2/users/u1/settings/{n}", False),  # :own allow
    ("GET", "/v1/svc2/users/u2/settings/{n}", False),  # :own deny
    ("GET", "/healthz", False),  # public
    ("GET", "/docs/api/{n}.html", False),  # public prefix
    ("GET", "/unknown/thing/{n}", False),  # catch-all
    ("PUT", "/nowhere/{n}", False),  # no rule
    ("GET", "/admin/users/{n}", False),  # prefix, denied
    ("GET", "/ADMIN/{n}/../admin", True),  # ambiguous → bad_path
    ("GET", "/v1/svc4/workspaces/w1/comments/c%2D{n}", True),  # escape decoded
]
_REQUESTS = [(m, p.format(n=7)) for m, p, _ in _SHAPES]


def _fresh_requests(count: int, *, tricky: bool) -> list[tuple[str, str]]:
    """``count`` requests cycling through the shapes with a fresh id each time, so every
    path is new to the policy's route memo (which holds 4096 entries)."""
    shapes = [(m, p) for m, p, hard in _SHAPES if tricky or not hard]
    return [
        (shapes[i % len(shapes)][0], shapes[i % len(shapes)][1].format(n=100_000 + i))
        for i in range(count)
    ]


def _calibrate() -> float:
    """ns per ``dict.get`` in a loop: how fast this interpreter is, to compare machines."""
    table = {str(i): i for i in range(64)}
    keys = list(table) * 1000
    start = time.perf_counter()
    for key in keys:
        table.get(key)
    return (time.perf_counter() - start) / len(keys) * 1e9


def _identity() -> Identity:
    return Identity(
        token_id="t",
        token_name="bench",
        token_type="personal",
        owner_kind="user",
        owner_id="u1",
        org_id="o",
        scopes=frozenset(
            {"threads:read", "threads:create", "projects:list", "files:read", "profile:read:own"}
        ),
        workspaces=frozenset({"w1"}),
        expires_at=None,
    )


def _time(fn: Callable[[], None], seconds: float, batch: int) -> tuple[int, float]:
    """Decisions done in ``seconds`` of this thread's CPU time, and that CPU time.

    CPU time, not wall time: the rate is what one core does, and a shared machine that
    takes the core away for a moment (another tenant, the kernel) must not count as the
    engine being slow; this is the same reason the server rows print CPU µs per request
    (issue 16, "Noise")."""
    done = 0
    gc.disable()
    try:
        start = time.thread_time()
        deadline = start + seconds
        while (now := time.thread_time()) < deadline:
            fn()
            done += batch
        return done, now - start
    finally:
        gc.enable()


def policy_rows(rules: int = 200, seconds: float = 1.0) -> list[tuple[str, float]]:
    """(row name, decisions per CPU second) for "fresh ids, plain", "fresh ids, all
    shapes" and "repeated paths", each timed for ``seconds`` of CPU on a generated
    ``rules``-rule policy."""
    policy: Policy = parse_policy(generate_policy(rules), "bench.toml")
    assert len(policy.spec.rules) == rules, len(policy.spec.rules)
    ident = _identity()
    headers: dict[str, str] = {}
    route, authorize = policy.route, policy.authorize

    def fresh(requests: list[tuple[str, str]]) -> Callable[[], None]:
        cursor = [0]

        def decide() -> None:
            start = cursor[0]
            for m, p in requests[start : start + 1000]:
                authorize(route(m, p), ident, headers)
            cursor[0] = (start + 1000) % len(requests)

        return decide

    def decide_repeated() -> None:
        for m, p in _REQUESTS:
            authorize(route(m, p), ident, headers)

    results: list[tuple[str, float]] = []
    for label, fn, batch in (
        ("fresh ids, plain", fresh(_fresh_requests(52_000, tricky=False)), 1000),
        ("fresh ids, all shapes", fresh(_fresh_requests(60_000, tricky=True)), 1000),
        ("repeated paths", decide_repeated, len(_REQUESTS)),
    ):
        fn()  # warm up
        done, elapsed = _time(fn, seconds, batch)
        results.append((label, done / elapsed))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    results = policy_rows(args.rules, args.seconds)
    print(
        f"policy: {args.rules} rules, {len(_SHAPES)} request shapes, 1 process, 1 core; "
        f"Python {platform.python_version()}, dict.get ≈ {_calibrate():.0f} ns"
    )
    print(
        f"{'route + authorize':<22} {'decisions/s':>12} {'µs/decision':>12}  target ≥ {TARGET:,}/s"
    )
    for label, rate in results:
        verdict = "ok" if rate >= TARGET else "below"
        print(f"{label:<22} {rate:>12,.0f} {1e6 / rate:>12.2f}  {verdict}")


if __name__ == "__main__":
    main()
