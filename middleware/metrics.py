"""Prometheus metrics, one :class:`Metrics` object per process.

Labels are bounded enums only — never a token, token id, user, path or IP (SPEC: no raw
token anywhere, and unbounded labels would blow up Prometheus). With
``PROMETHEUS_MULTIPROC_DIR`` set (several workers), prometheus-client keeps values in
per-process files and :func:`render` aggregates them with ``MultiProcessCollector``.

The two families written on every decision (``patgate_decisions_total``,
``patgate_decision_seconds``) are recorded through :attr:`Metrics.hot`. In a single
process that is :class:`LocalCounters`: plain numbers, exported by a collector at scrape
time. A prometheus-client ``inc`` takes a lock (~0.5 µs) and ``observe`` walks the
buckets under locks (~1 µs): together a third of a cached decision's CPU. With
``PROMETHEUS_MULTIPROC_DIR`` the regular Counter/Histogram are used instead, because
``MultiProcessCollector`` only reads the per-process files that prometheus-client's own
value classes write: a custom collector's values would be missing from ``/metrics``.
``patgate_cache_hits_total``, bumped on every cached decision, is a :class:`LocalCounter`
in a single process for the same reason (issue 16: ~2 % of a request's CPU under load
went to its lock), and the proxy's two per-request families
(``patgate_upstream_requests_total``, ``patgate_upstream_seconds``) are recorded through
:attr:`Metrics.upstream_hot` the same way. ``Metrics.decisions``,
``Metrics.decision_seconds``, ``Metrics.upstream_requests``, ``Metrics.upstream_seconds``
and ``Metrics.cache_hits_declared`` always hold the declarations
(name, help, labels: the deploy tests read them); they are registered and written only in
multiprocess mode — record decisions through ``Metrics.hot``.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

__all__ = [
    "CONTENT_TYPE_LATEST",
    "DECISION_REASONS",
    "HotMetrics",
    "Incrementer",
    "LocalCounter",
    "LocalCounters",
    "Metrics",
    "Observer",
    "RegisteredCounters",
    "mark_process_dead",
    "render",
]

#: every value the ``reason`` label of ``patgate_decisions_total`` takes.
DECISION_REASONS = (
    "ok",
    "public",
    "missing_credentials",
    "invalid_request",
    "invalid_token",
    "expired",
    "revoked",
    "rotated",
    "deleted",
    "disabled",
    "no_permission",
    "insufficient_scope",
    "own",
    "workspace",
    "ip_not_allowed",
    "rate_limited",
    "bad_path",
    "method_not_allowed",
    "no_rule",
    "store_unavailable",
)

_FAST_BUCKETS = (
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
)  # fmt: skip
#: (name, help, label names) of the two per-decision families.
_HOT_SPECS = (
    ("patgate_decisions", "Authentication/authorization decisions by outcome and reason.",
     ("outcome", "reason")),
    ("patgate_decision_seconds",
     "Time to decide a request (parse to decision), excluding the upstream.", ()),
)  # fmt: skip
#: invalidation lag: fine around the 50 ms alert threshold (deploy/prometheus/alerts.yml).
_LAG_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.25, 0.5, 1,
)  # fmt: skip
_UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: the proxy's two per-request families (recorded through ``Metrics.upstream_hot``).
_UPSTREAM_SPECS = (
    ("patgate_upstream_requests",
     "Requests proxied upstream by response status class (or error).", ("status_class",)),
    ("patgate_upstream_seconds", "Upstream response time (until response headers).", ()),
)  # fmt: skip


class Incrementer(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class HotMetrics(Protocol):
    """The two families recorded on every decision (the authenticator's view)."""

    @property
    def seconds(self) -> Observer: ...

    def decision(self, outcome: str, reason: str) -> Incrementer: ...

    def child(self, *labels: str) -> Incrementer:
        """The counter's child for these label values."""


class _Count:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class _Buckets:
    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        # bisect_left: the first bound >= amount, as Prometheus buckets are ``le``.
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


def _created_enabled() -> bool:
    # The switch prometheus-client reads for its own metrics.
    flag = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False")
    return flag.lower() not in ("true", "1", "t")


_Spec = tuple[str, str, tuple[str, ...]]


class LocalCounters(Collector):
    """``patgate_decisions_total`` and ``patgate_decision_seconds`` as plain numbers,
    turned into metric families at scrape time (same names, help, labels and samples as
    the Counter/Histogram they stand in for).

    No lock: the values are only written from the event loop's thread; a scrape reads
    them on that thread too (the ``/metrics`` endpoint is async). A read from another
    thread may see a histogram whose count and sum are one observation apart, which
    Prometheus tolerates (rate() over a scrape interval)."""

    def __init__(self, decisions: _Spec, seconds: _Spec, *, buckets: tuple[float, ...]) -> None:
        self._specs = (decisions, seconds)
        self._decisions: dict[tuple[str, ...], _Count] = {}
        self.seconds = _Buckets(tuple(float(b) for b in buckets))
        self._created = _created_enabled()

    def decision(self, outcome: str, reason: str) -> _Count:
        return self.child(outcome, reason)

    def child(self, *labels: str) -> _Count:
        child = self._decisions.get(labels)
        if child is None:
            child = self._decisions[labels] = _Count()
        return child

    def describe(self) -> Iterable[Metric]:
        return self._families(samples=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(samples=True)

    def _families(self, *, samples: bool) -> list[Metric]:
        (dname, dhelp, dlabels), (sname, shelp, _) = self._specs
        created = self._created
        decisions = CounterMetricFamily(dname, dhelp, labels=dlabels)
        seconds = HistogramMetricFamily(sname, shelp, labels=())
        if samples:
            for labels, count in list(self._decisions.items()):
                decisions.add_metric(labels, count.value, count.created if created else None)
            h = self.seconds
            cumulative, buckets = 0, []
            for bound, n in zip((*h.bounds, float("inf")), h.counts, strict=True):
                cumulative += n
                buckets.append((_le(bound), float(cumulative)))
            seconds.add_metric((), buckets, h.sum)
            if created:
                seconds.samples.append(Sample(sname + "_created", {}, h.created))
        return [decisions, seconds]


def _local_allow(
    decision: _Count, hits: LocalCounter, seconds: _Buckets
) -> Callable[[float], None]:
    """``Metrics.cached_allow`` on plain numbers: the body of three calls, inlined."""
    count = hits.count
    bounds, counts = seconds.bounds, seconds.counts

    def allow(elapsed: float) -> None:
        decision.value += 1
        count.value += 1
        counts[bisect_left(bounds, elapsed)] += 1
        seconds.sum += elapsed

    return allow


def _registered_allow(
    decision: Incrementer, hits: Incrementer, seconds: Observer
) -> Callable[[float], None]:
    """``Metrics.cached_allow`` on prometheus-client metrics (multiprocess mode)."""

    def allow(elapsed: float) -> None:
        decision.inc()
        hits.inc()
        seconds.observe(elapsed)

    return allow


def _le(bound: float) -> str:
    # How prometheus-client spells the ``le`` label (utils.floatToGoString) for these
    # bounds: repr() of the float, and +Inf.
    return "+Inf" if bound == float("inf") else repr(bound)


class LocalCounter(Collector):
    """One unlabelled counter as a plain number, exported at scrape time with the same
    samples as a prometheus-client ``Counter`` (``_total``, ``_created``): for a counter
    bumped on every request (``patgate_cache_hits_total``), in a single process only —
    the reason is :class:`LocalCounters`'."""

    def __init__(self, name: str, documentation: str) -> None:
        self._name = name
        self._documentation = documentation
        #: the number itself (``Metrics.cached_allow`` adds to it directly).
        self.count = _Count()
        self._created = _created_enabled()
        #: bound once: the hot path calls ``inc`` with no attribute walk.
        self.inc = self.count.inc

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self._name, self._documentation)
        created = self.count.created if self._created else None
        family.add_metric((), self.count.value, created)
        return [family]


class RegisteredCounters:
    """The same two families as prometheus-client metrics (multiprocess mode)."""

    def __init__(self, decisions: Counter, seconds: Histogram) -> None:
        self._decisions = decisions
        self.seconds: Observer = seconds

    def decision(self, outcome: str, reason: str) -> Incrementer:
        return self._decisions.labels(outcome, reason)

    def child(self, *labels: str) -> Incrementer:
        return self._decisions.labels(*labels)


class Metrics:
    """All patgate metrics, registered on ``registry`` (a fresh one by default)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, multiprocess: bool | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if multiprocess is None:
            multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.multiprocess = multiprocess
        # The two per-decision families: declared unregistered (registry=None), then
        # either registered as they are (multiprocess) or stood in for by LocalCounters.
        decisions, seconds = _HOT_SPECS
        self.decisions = Counter(*decisions, registry=None)
        self.decision_seconds = Histogram(*seconds, buckets=_FAST_BUCKETS, registry=None)
        self.hot: HotMetrics
        if multiprocess:
            r.register(self.decisions)
            r.register(self.decision_seconds)
            self.hot = RegisteredCounters(self.decisions, self.decision_seconds)
        else:
            local = LocalCounters(decisions, seconds, buckets=_FAST_BUCKETS)
            r.register(local)
            self.hot = local
        hits = ("patgate_cache_hits_total", "Token lookups answered by the local cache.")
        #: the declaration, always (like ``decisions``); registered in multiprocess mode.
        self.cache_hits_declared = Counter(*hits, registry=None)
        self.cache_hits: Incrementer
        if multiprocess:
            r.register(self.cache_hits_declared)
            self.cache_hits = self.cache_hits_declared
        else:
            # Bumped on every cached decision: a plain number (see LocalCounters).
            local_hits = LocalCounter(*hits)
            r.register(local_hits)
            self.cache_hits = local_hits
        #: the three updates of an allowed decision answered from the cache (a decision
        #: ``allow``/``ok``, a cache hit, its seconds) in one call: what the hot path
        #: records on almost every request (issue 16).
        self.cached_allow: Callable[[float], None]
        if multiprocess:
            self.cached_allow = _registered_allow(
                self.hot.decision("allow", "ok"), self.cache_hits, self.hot.seconds
            )
        else:
            self.cached_allow = _local_allow(local.child("allow", "ok"), local_hits, local.seconds)
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
        # Also per request (every proxied one): the same split as decisions.
        requests, upstream_seconds = _UPSTREAM_SPECS
        self.upstream_requests = Counter(*requests, registry=None)
        self.upstream_seconds = Histogram(
            *upstream_seconds, buckets=_UPSTREAM_BUCKETS, registry=None
        )
        #: how the proxy records the two: ``child(status_class).inc()``, ``seconds``.
        self.upstream_hot: HotMetrics
        if multiprocess:
            r.register(self.upstream_requests)
            r.register(self.upstream_seconds)
            self.upstream_hot = RegisteredCounters(self.upstream_requests, self.upstream_seconds)
        else:
            upstream = LocalCounters(requests, upstream_seconds, buckets=_UPSTREAM_BUCKETS)
            r.register(upstream)
            self.upstream_hot = upstream
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
            # livemin: 0 when any live worker is disconnected; a dead worker's value goes
            # with it (mark_process_dead), unlike "min".
            multiprocess_mode="livemin",
            registry=r,
        )
        self.invalidation_lag = Histogram(
            "patgate_invalidation_lag_seconds",
            "Time from an invalidation's commit (Redis server clock) to this process applying it.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        # livemin: with several workers an instance reports its least caught-up one.
        self.invalidation_position = Gauge(
            "patgate_invalidation_position",
            "Position of the last invalidation this process applied (or caught up to).",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.policy_reloads = Counter(
            "patgate_policy_reloads_total",
            "Policy reload attempts by result (success, failure).",
            ["result"],
            registry=r,
        )
        self.auth_failures = Counter(
            "patgate_auth_failures_total",
            "Failed authentications counted against their client (the failure limit).",
            registry=r,
        )
        self.auth_failures_dropped = Counter(
            "patgate_auth_failures_dropped_total",
            "Failed authentications not counted because the per-process table was full.",
            registry=r,
        )
        self.client_blocks = Counter(
            "patgate_client_blocks_total",
            "Clients blocked (429) after too many failed authentications.",
            registry=r,
        )
        self.blocked_clients = Gauge(
            "patgate_blocked_clients",
            "Clients currently blocked by this process after too many failed authentications.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.token_reuse = Counter(
            "patgate_token_reuse_total",
            "Dead secrets presented again, by kind (revoked, rotated, expired, deleted).",
            ["kind"],
            registry=r,
        )
        self.pepper_reindexed = Counter(
            "patgate_pepper_reindexed_total",
            "Tokens re-indexed from the previous pepper's digest to the current one.",
            registry=r,
        )
        self.embedded_restarts = Counter(
            "patgate_embedded_restarts_total",
            "Restarts of the embedded valkey-server after it died.",
            registry=r,
        )


def mark_process_dead(pid: int, directory: str) -> None:
    """Drop a dead worker's ``live*`` gauge files from ``directory`` (the workers'
    ``PROMETHEUS_MULTIPROC_DIR``); its counters and histograms stay in the totals."""
    _multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def render(metrics: Metrics) -> bytes:
    """The exposition text; aggregates all workers when running multiprocess."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(metrics.registry)
