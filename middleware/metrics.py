"""Prometheus metrics, one :class:`Metrics` object per process.

Labels are bounded enums only — never a token, token id, user, path or IP (SPEC: no raw
token anywhere, and unbounded labels would blow up Prometheus). With
``PROMETHEUS_MULTIPROC_DIR`` set (several workers), prometheus-client keeps values in
per-process files and :func:`render` aggregates them with ``MultiProcessCollector``.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

__all__ = ["CONTENT_TYPE_LATEST", "DECISION_REASONS", "Metrics", "render"]

#: every value the ``reason`` label of ``patgate_decisions_total`` takes.
DECISION_REASONS = (
    "ok",
    "public",
    "missing_credentials",
    "invalid_request",
    "invalid_token",
    "expired",
    "revoked",
    "disabled",
    "insufficient_scope",
    "own",
    "workspace",
    "bad_path",
    "no_rule",
    "store_unavailable",
)

_FAST_BUCKETS = (
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
)  # fmt: skip
_UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """All patgate metrics, registered on ``registry`` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "patgate_decisions_total",
            "Authentication/authorization decisions by outcome and reason.",
            ["outcome", "reason"],
            registry=r,
        )
        self.decision_seconds = Histogram(
            "patgate_decision_seconds",
            "Time to decide a request (parse to decision), excluding the upstream.",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "patgate_cache_hits_total", "Token lookups answered by the local cache.", registry=r
        )
        self.cache_misses = Counter(
            "patgate_cache_misses_total", "Token lookups that went to Redis.", registry=r
        )
        self.cache_invalidations = Counter(
            "patgate_cache_invalidations_total",
            "Local cache invalidations by kind (token, owner, flush).",
            ["kind"],
            registry=r,
        )
        self.cache_entries = Gauge(
            "patgate_cache_entries",
            "Entries in the local token cache.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.upstream_requests = Counter(
            "patgate_upstream_requests_total",
            "Requests proxied upstream by response status class (or error).",
            ["status_class"],
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "patgate_upstream_seconds",
            "Upstream response time (until response headers).",
            buckets=_UPSTREAM_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "patgate_upstream_errors_total",
            "Upstream failures by kind (connect, timeout, protocol).",
            ["kind"],
            registry=r,
        )
        self.lastused_pending = Gauge(
            "patgate_lastused_pending",
            "Distinct tokens with a last-used entry waiting to be flushed.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.lastused_flushed = Counter(
            "patgate_lastused_flushed_total", "Last-used entries written to Redis.", registry=r
        )
        self.lastused_dropped = Counter(
            "patgate_lastused_dropped_total",
            "Last-used entries dropped because the pending buffer was full or Redis failed.",
            registry=r,
        )
        self.redis_errors = Counter(
            "patgate_redis_errors_total",
            "Redis operations that failed, by operation.",
            ["op"],
            registry=r,
        )
        self.redis_up = Gauge(
            "patgate_redis_up",
            "1 when the invalidation subscription to Redis is connected, else 0.",
            multiprocess_mode="min",
            registry=r,
        )
        self.policy_reloads = Counter(
            "patgate_policy_reloads_total",
            "Policy reload attempts by result (success, failure).",
            ["result"],
            registry=r,
        )


def render(metrics: Metrics) -> bytes:
    """The exposition text; aggregates all workers when running multiprocess."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(metrics.registry)
