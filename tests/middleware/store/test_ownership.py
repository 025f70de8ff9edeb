"""A store owns its wire formats (issue 10, STYLE 13): no code outside
``middleware/store/`` writes invalidation messages or audit events by hand, runs its own
compare-and-set loop, or builds its own Redis client."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[3]
_STORE = _ROOT / "middleware" / "store"
#: the one client factory (middleware/runtime.py ``redis_client``).
#: the factory: runtime.redis_client, which builds the client in connect.py (issue 11).
_FACTORY = (_ROOT / "middleware" / "runtime.py", _ROOT / "middleware" / "connect.py")

_RULES = [
    # (what, pattern): each must occur only inside the store package
    (
        "pub/sub message written by hand",
        re.compile(r"""\.publish\.append\(|["']t ["'] *\+|["']u ["'] *\+"""),
    ),
    ("audit event appended past Plan.audit", re.compile(r"\.events\.append\(")),
    ("a compare-and-set loop of its own", re.compile(r"except StaleWrite")),
]
#: async clients (bench/run.py reads the server version once with a sync one).
_CLIENT = re.compile(r"aioredis\.from_url\(|redis\.asyncio\.from_url\(")


def _sources() -> list[Path]:
    files: list[Path] = []
    for top in ("gateway", "middleware", "policies", "bench"):
        files += sorted((_ROOT / top).rglob("*.py"))
    return files


@pytest.mark.parametrize(("what", "pattern"), _RULES, ids=[w for w, _ in _RULES])
def test_only_the_store_writes_its_wire_formats(what: str, pattern: re.Pattern[str]) -> None:
    offenders = [
        f"{path.relative_to(_ROOT)}:{n}"
        for path in _sources()
        if _STORE not in path.parents
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == [], f"{what}: {offenders}"


def test_one_redis_client_factory() -> None:
    """The runtime, the CLI and the benchmark build their clients through
    ``patgate.middleware.runtime.redis_client`` (tests may build raw ones)."""
    offenders = [
        f"{path.relative_to(_ROOT)}:{n}"
        for path in _sources()
        if path not in _FACTORY
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _CLIENT.search(line)
    ]
    assert offenders == [], offenders
