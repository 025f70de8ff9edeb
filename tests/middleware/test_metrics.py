"""The per-decision metrics: plain numbers in one process, exported at scrape time with
the same names, types, labels and help as prometheus-client's own Counter/Histogram."""

from __future__ import annotations

import re

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from patgate.gateway.settings import Settings
from patgate.middleware.asgi import PatgateMiddleware
from patgate.middleware.metrics import LocalCounters, Metrics, RegisteredCounters, render
from patgate.middleware.runtime import Runtime
from patgate.policies.engine import parse_policy

from ._servers import serve
from ._tokens import POLICY_TOML, add_user, issue

_CREATED = re.compile(r"^(\S+_created(?:\{[^}]*\})?) \S+$", re.MULTILINE)


def _record(metrics: Metrics) -> None:
    hot = metrics.hot
    hot.decision("allow", "ok").inc()
    hot.decision("allow", "ok").inc()
    hot.decision("deny", "expired").inc(3)
    for seconds in (4e-6, 5e-6, 1.2e-5, 0.01, 0.3):
        hot.seconds.observe(seconds)
    metrics.cache_hits.inc()


def _text(metrics: Metrics) -> str:
    # _created is a wall-clock timestamp taken at construction: blank it out.
    return _CREATED.sub(r"\1 T", generate_latest(metrics.registry).decode())


def test_local_exposition_equals_prometheus_clients() -> None:
    local, registered = Metrics(multiprocess=False), Metrics(multiprocess=True)
    assert isinstance(local.hot, LocalCounters)
    assert isinstance(registered.hot, RegisteredCounters)
    _record(local)
    _record(registered)
    text = _text(local)
    assert text == _text(registered)
    assert 'patgate_decisions_total{outcome="allow",reason="ok"} 2.0' in text
    assert 'patgate_decision_seconds_bucket{le="5e-06"} 2.0' in text  # le: 5e-06 counts
    assert 'patgate_decision_seconds_bucket{le="+Inf"} 5.0' in text
    assert "patgate_decision_seconds_count 5.0" in text


def test_cached_allow_is_the_three_updates_in_one_call() -> None:
    """The hot path's one call (issue 16) exports exactly what a decision ``allow/ok``,
    a cache hit and an observation would, in both modes."""
    for multiprocess in (False, True):
        one, three = Metrics(multiprocess=multiprocess), Metrics(multiprocess=multiprocess)
        for seconds in (4e-6, 5e-6, 0.3):
            one.cached_allow(seconds)
            three.hot.decision("allow", "ok").inc()
            three.cache_hits.inc()
            three.hot.seconds.observe(seconds)
        text = _text(one)
        assert text == _text(three)
        assert 'patgate_decisions_total{outcome="allow",reason="ok"} 3.0' in text
        assert "patgate_cache_hits_total 3.0" in text
        assert 'patgate_decision_seconds_bucket{le="5e-06"} 2.0' in text
        assert "patgate_decision_seconds_count 3.0" in text


def test_multiprocess_is_chosen_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert isinstance(Metrics().hot, RegisteredCounters)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    assert isinstance(Metrics().hot, LocalCounters)


def test_duplicate_registration_is_refused() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(metrics.registry)


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@pytest.mark.anyio
async def test_metrics_count_the_requests_made(settings: Settings) -> None:
    runtime = Runtime(
        settings.evolve(lastused_interval=60), policy=parse_policy(POLICY_TOML, "metrics-test.toml")
    )
    await add_user(runtime.store, "u1")
    reader = await issue(runtime.store, runtime.token_format, scopes=("threads:read",))
    routes = [Route("/threads/{id}", _ok), Route("/threads", _ok, methods=["POST"]),
              Route("/public", _ok)]  # fmt: skip
    app = Starlette(routes=routes, middleware=[Middleware(PatgateMiddleware, runtime=runtime)])
    bearer = {"Authorization": f"Bearer {reader.secret}"}
    expected = {"ok": 5, "public": 2, "missing_credentials": 3, "invalid_token": 1,
                "insufficient_scope": 2}  # fmt: skip
    async with (
        serve(app) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client,
    ):
        assert await runtime.subscriber.wait_connected(5.0)  # the cache is on
        statuses = []
        for _ in range(expected["ok"]):
            statuses.append((await client.get("/threads/1", headers=bearer)).status_code)
        for _ in range(expected["public"]):
            statuses.append((await client.get("/public")).status_code)
        for _ in range(expected["missing_credentials"]):
            statuses.append((await client.get("/threads/1")).status_code)
        bad = {"Authorization": "Bearer pat_not_a_real_token"}
        statuses.append((await client.get("/threads/1", headers=bad)).status_code)
        for _ in range(expected["insufficient_scope"]):
            statuses.append((await client.post("/threads", headers=bearer)).status_code)
        body = render(runtime.metrics).decode()
    assert statuses == [200] * 5 + [200] * 2 + [401] * 3 + [401] + [403] * 2
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    for reason, count in expected.items():
        outcome = "allow" if reason in ("ok", "public") else "deny"
        key = ("patgate_decisions_total", (("outcome", outcome), ("reason", reason)))
        assert samples[key] == count, reason
    total = sum(expected.values())
    assert samples[("patgate_decision_seconds_count", ())] == total
    assert samples[("patgate_decision_seconds_bucket", (("le", "+Inf"),))] == total
    assert 0 < samples[("patgate_decision_seconds_sum", ())] < total  # seconds, not µs
    # one token, looked up 7 times: the first read goes to Redis, the rest hit the cache.
    assert samples[("patgate_cache_misses_total", ())] == 1
    assert samples[("patgate_cache_hits_total", ())] == 6
