"""The client factory (middleware/connect.py): URL grammar, clear errors, real topologies."""

from __future__ import annotations

import socket

import pytest
from redis.asyncio.cluster import RedisCluster

from patgate.gateway.cli import main
from patgate.middleware.connect import (
    StoreURL,
    check_reachable,
    parse_store_url,
    redacted,
)
from patgate.middleware.errors import ConfigError, StoreUnavailable
from patgate.middleware.runtime import redis_client
from tests._topologies import Topology


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:6379/0", StoreURL("standalone", False, (), None, None)),
        ("rediss://u:p@h:6380/1", StoreURL("standalone", True, (), "u", "p")),
        ("unix:///tmp/v.sock?db=0", StoreURL("standalone", False, (), None, None)),
        (
            "redis+sentinel://a:26379,b:26380/mymaster",
            StoreURL(
                "sentinel", False, (("a", 26379), ("b", 26380)), None, None, service="mymaster"
            ),
        ),
        (
            "rediss+sentinel://app:s%40cret@a,b:1/svc?db=2&sentinel_password=x",
            StoreURL(
                "sentinel",
                True,
                (("a", 26379), ("b", 1)),
                "app",
                "s@cret",
                service="svc",
                db=2,
                sentinel_password="x",
            ),
        ),
        (
            "redis+cluster://h1:7000,h2:7001",
            StoreURL("cluster", False, (("h1", 7000), ("h2", 7001)), None, None),
        ),
        (
            "rediss+cluster://u:p@[::1]:7000,h2",
            StoreURL("cluster", True, (("::1", 7000), ("h2", 6379)), "u", "p"),
        ),
    ],
)
def test_url_grammar(url: str, expected: StoreURL) -> None:
    assert parse_store_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://u:hunter2@h:1", "unknown scheme"),
        ("redis+sentinel://u:hunter2@a:26379", "names its service"),
        ("redis+sentinel://u:hunter2@a:26379/s/t", "names its service"),
        ("redis+cluster://u:hunter2@h:x", "bad host:port"),
        ("redis+cluster://u:hunter2@h:7000/1", "no database"),
        ("redis+cluster://u:hunter2@", "no hosts"),
        ("redis+sentinel://u:hunter2@a/s?db=x", "db must be a number"),
    ],
)
def test_a_wrong_url_is_one_config_error_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        redis_client(url)
    assert "hunter2" not in str(info.value)
    assert "PATGATE_REDIS_URL" in str(info.value)


def test_redacted() -> None:
    assert redacted("redis+cluster://u:pw@h:1,g:2") == "redis+cluster://u:***@h:1,g:2"
    assert redacted("redis://h:1/0") == "redis://h:1/0"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.anyio
@pytest.mark.parametrize("scheme", ["redis+cluster", "redis+sentinel"])
async def test_unreachable_topology_is_store_unavailable_naming_the_url(scheme: str) -> None:
    url = f"{scheme}://u:hunter2@127.0.0.1:{_closed_port()}" + (
        "/patgate" if "sentinel" in scheme else ""
    )
    client = redis_client(url, timeout=0.5, connect_timeout=0.2)
    try:
        with pytest.raises(StoreUnavailable, match="cannot reach") as info:
            await check_reachable(client, url)
    finally:
        await client.aclose()
    assert "u:***@127.0.0.1" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_cli_wrong_url_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--redis-url", "redis+sentinel://u:hunter2@h:1", "tokens", "list"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "names its service" in err
    assert "hunter2" not in err


def test_cli_unreachable_cluster_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis+cluster://127.0.0.1:{_closed_port()}"
    code = main(["--redis-url", url, "tokens", "list"])
    err = capsys.readouterr().err.strip()
    assert code == 3  # the CLI's code for an unreachable store, as with standalone
    assert len(err.splitlines()) == 1
    assert "cannot reach the cluster at " + url in err


@pytest.mark.slow
@pytest.mark.anyio
async def test_cluster_client_reaches_every_primary(valkey_cluster: Topology) -> None:
    client = redis_client(valkey_cluster.url)
    assert isinstance(client, RedisCluster)
    try:
        await check_reachable(client, valkey_cluster.url)
        assert len(client.get_primaries()) == 3
        infos = await client.info("replication", target_nodes=RedisCluster.PRIMARIES)
        assert [i["connected_slaves"] for i in infos.values()] == [1, 1, 1]
    finally:
        await client.aclose()


@pytest.mark.slow
@pytest.mark.anyio
async def test_sentinel_client_finds_the_primary(valkey_sentinel: Topology) -> None:
    client = redis_client(valkey_sentinel.url)
    try:
        await check_reachable(client, valkey_sentinel.url)
        info = await client.info("replication")  # type: ignore[union-attr]
        assert info["role"] == "master"
        assert info["connected_slaves"] == 2
    finally:
        await client.aclose()
