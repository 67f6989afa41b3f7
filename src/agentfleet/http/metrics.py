"""Per-target metrics for HttpPool: aiohttp TraceConfig hooks, stats() and Prometheus.

Counters are mutated only on the pool's own event loop; readers (``stats()``, the
Prometheus collector) may run in any thread and only take snapshots (copies of dicts and
lists, which are atomic under the GIL), so no locks are needed.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

if TYPE_CHECKING:  # prometheus_client is imported when metrics are exported, not before
    from prometheus_client.core import CollectorRegistry, Metric

RESERVOIR_SIZE = 2048
# Seconds; spans sub-ms local calls up to hour-long evaluations.
BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, math.inf,
)  # fmt: skip


class Summary:
    """count/sum/max exactly, p50/p95 from a bounded uniform reservoir, fixed buckets."""

    __slots__ = ("_rng", "_seen", "buckets", "count", "max", "reservoir", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.max = 0.0
        self.reservoir: list[float] = []
        self.buckets = [0] * len(BUCKETS)  # non-cumulative
        self._seen = 0
        self._rng = random.Random()

    def observe(self, value: float) -> None:
        value = max(0.0, value)
        self.count += 1
        self.sum += value
        if value > self.max:
            self.max = value
        self.buckets[bisect.bisect_left(BUCKETS, value)] += 1
        self._seen += 1
        if len(self.reservoir) < RESERVOIR_SIZE:
            self.reservoir.append(value)
        else:  # Algorithm R: every sample kept with equal probability
            j = self._rng.randrange(self._seen)
            if j < RESERVOIR_SIZE:
                self.reservoir[j] = value

    def snapshot(self) -> dict[str, float | int]:
        sample = sorted(list(self.reservoir))
        count = self.count
        return {
            "count": count,
            "mean": round(self.sum / count, 6) if count else 0.0,
            "p50": round(_quantile(sample, 0.50), 6),
            "p95": round(_quantile(sample, 0.95), 6),
            "max": round(self.max, 6),
        }

    def cumulative_buckets(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for bound, n in zip(BUCKETS, list(self.buckets), strict=True):
            acc += n
            out.append(("+Inf" if math.isinf(bound) else repr(bound), float(acc)))
        return out


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    idx = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[idx]


@dataclass(eq=False)
class TargetMetrics:
    """Everything the pool knows about one target (``host:port`` or a caller's label)."""

    connections_created: int = 0
    connections_reused: int = 0
    requests: int = 0  # attempts sent (each retry counts)
    in_flight: int = 0  # between on_request_start and on_request_end/exception
    waiting: int = 0  # waiting for a pool slot (our semaphores)
    retries: int = 0
    cancelled: int = 0
    aiohttp_queued: int = 0  # times aiohttp's own connector queued (should stay ~0)
    errors: Counter[str] = field(default_factory=Counter)
    latency: Summary = field(default_factory=Summary)  # per attempt, excludes slot wait
    queue_wait: Summary = field(default_factory=Summary)  # time waiting for a slot

    COUNTERS = (
        "connections_created",
        "connections_reused",
        "requests",
        "in_flight",
        "waiting",
        "retries",
        "cancelled",
        "aiohttp_queued",
    )

    def snapshot(self) -> dict[str, Any]:
        errors = dict(self.errors.copy())
        out: dict[str, Any] = {name: getattr(self, name) for name in self.COUNTERS}
        out["errors"] = errors
        out["errors_total"] = sum(errors.values())
        out["latency_s"] = self.latency.snapshot()
        out["queue_wait_s"] = self.queue_wait.snapshot()
        return out


class PoolMetrics:
    """Per-target metrics plus pool-wide latency/queue summaries."""

    def __init__(self) -> None:
        self.targets: dict[str, TargetMetrics] = {}
        self.total_latency = Summary()
        self.total_queue_wait = Summary()

    def target(self, label: str) -> TargetMetrics:
        tm = self.targets.get(label)
        if tm is None:
            tm = self.targets[label] = TargetMetrics()
        return tm

    def observe_latency(self, tm: TargetMetrics, seconds: float) -> None:
        tm.latency.observe(seconds)
        self.total_latency.observe(seconds)

    def observe_queue_wait(self, tm: TargetMetrics, seconds: float) -> None:
        tm.queue_wait.observe(seconds)
        self.total_queue_wait.observe(seconds)

    def snapshot(self) -> dict[str, Any]:
        per_target = {label: tm.snapshot() for label, tm in list(self.targets.items())}
        totals: dict[str, Any] = {
            name: sum(t[name] for t in per_target.values()) for name in TargetMetrics.COUNTERS
        }
        errors: Counter[str] = Counter()
        for t in per_target.values():
            errors.update(t["errors"])
        totals["errors"] = dict(errors)
        totals["errors_total"] = sum(errors.values())
        totals["latency_s"] = self.total_latency.snapshot()
        totals["queue_wait_s"] = self.total_queue_wait.snapshot()
        return {"totals": totals, "targets": per_target}


class LimitsLike(Protocol):
    @property
    def limit(self) -> int: ...

    @property
    def limit_per_host(self) -> int: ...


class MeteredPool(Protocol):
    """What the collectors read of a pool (:class:`~agentfleet.http.pool.HttpPool` is one);
    a protocol, so that this module never imports the pool's."""

    @property
    def name(self) -> str: ...

    @property
    def limits(self) -> LimitsLike: ...

    @property
    def metrics(self) -> PoolMetrics: ...

    @property
    def closed(self) -> bool: ...


# -- aiohttp tracing --------------------------------------------------------------------


class AttemptTrace:
    """Passed as ``trace_request_ctx`` for one attempt: which target, what was recorded."""

    __slots__ = ("ended", "error_recorded", "started", "tm")

    def __init__(self, tm: TargetMetrics) -> None:
        self.tm = tm
        self.started = False
        self.ended = False
        self.error_recorded = False


def _attempt(ctx: SimpleNamespace) -> AttemptTrace | None:
    at = getattr(ctx, "trace_request_ctx", None)
    return at if isinstance(at, AttemptTrace) else None


def error_kind(exc: BaseException) -> str:
    return type(exc).__name__


def make_trace_config() -> aiohttp.TraceConfig:
    """TraceConfig feeding the :class:`TargetMetrics` carried in ``trace_request_ctx``."""
    tc = aiohttp.TraceConfig()

    async def on_request_start(_s: Any, ctx: SimpleNamespace, _p: Any) -> None:
        at = _attempt(ctx)
        if at is not None and not at.started:
            at.started = True
            at.tm.requests += 1
            at.tm.in_flight += 1

    async def on_request_end(_s: Any, ctx: SimpleNamespace, _p: Any) -> None:
        at = _attempt(ctx)
        if at is not None and at.started and not at.ended:
            at.ended = True
            at.tm.in_flight -= 1

    async def on_request_exception(
        _s: Any, ctx: SimpleNamespace, params: aiohttp.TraceRequestExceptionParams
    ) -> None:
        at = _attempt(ctx)
        if at is None or not at.started or at.ended:
            return
        at.ended = True
        at.tm.in_flight -= 1
        exc = params.exception
        if isinstance(exc, Exception):  # CancelledError is not an error of the target
            at.tm.errors[error_kind(exc)] += 1
            at.error_recorded = True

    async def on_connection_create_end(_s: Any, ctx: SimpleNamespace, _p: Any) -> None:
        at = _attempt(ctx)
        if at is not None:
            at.tm.connections_created += 1

    async def on_connection_reuseconn(_s: Any, ctx: SimpleNamespace, _p: Any) -> None:
        at = _attempt(ctx)
        if at is not None:
            at.tm.connections_reused += 1

    async def on_connection_queued_start(_s: Any, ctx: SimpleNamespace, _p: Any) -> None:
        at = _attempt(ctx)
        if at is not None:
            at.tm.aiohttp_queued += 1

    async def on_connection_queued_end(_s: Any, ctx: SimpleNamespace, _p: Any) -> None:
        return None  # our own gate measures queueing; aiohttp's queue should be empty

    tc.on_request_start.append(on_request_start)
    tc.on_request_end.append(on_request_end)
    tc.on_request_exception.append(on_request_exception)
    tc.on_connection_create_end.append(on_connection_create_end)
    tc.on_connection_reuseconn.append(on_connection_reuseconn)
    tc.on_connection_queued_start.append(on_connection_queued_start)
    tc.on_connection_queued_end.append(on_connection_queued_end)
    return tc


# -- Prometheus -------------------------------------------------------------------------

PREFIX = "agentfleet_http"
METRIC_NAMES = (
    f"{PREFIX}_connections_created_total",
    f"{PREFIX}_connections_reused_total",
    f"{PREFIX}_requests_total",
    f"{PREFIX}_requests_in_flight",
    f"{PREFIX}_requests_waiting",
    f"{PREFIX}_retries_total",
    f"{PREFIX}_request_errors_total",
    f"{PREFIX}_request_duration_seconds",
    f"{PREFIX}_pool_wait_seconds",
    f"{PREFIX}_pool_limit",
)

# Every pool of the process, weakly, by creation number (so in creation order).
_all_pools: weakref.WeakValueDictionary[int, MeteredPool] = weakref.WeakValueDictionary()
_pool_ids = itertools.count(1)


def track_pool(pool: MeteredPool) -> str:
    """Remember ``pool`` (weakly) for the all-pools collector; returns a unique default name."""
    n = next(_pool_ids)
    _all_pools[n] = pool
    return f"pool-{n}"


def live_pools(*, include_closed: bool = False) -> list[MeteredPool]:
    """Pools not yet garbage collected and (unless ``include_closed``) not closed."""
    pools = [p for _, p in sorted(_all_pools.items())]
    return pools if include_closed else [p for p in pools if not p.closed]


class PoolCollector:
    """prometheus_client collector for the given pools (weakly held), or for every open
    pool in the process when constructed without pools (closed ones drop out)."""

    def __init__(self, *pools: MeteredPool) -> None:
        self._all = not pools
        self._pools: dict[int, weakref.ref[MeteredPool]] = {}
        for p in pools:
            self.add(p)

    def add(self, pool: MeteredPool) -> None:
        if not self._all:
            self._pools[id(pool)] = weakref.ref(pool)

    def pools(self) -> list[MeteredPool]:
        if self._all:
            return live_pools()
        return [p for r in list(self._pools.values()) if (p := r()) is not None]

    def describe(self) -> Iterable[Metric]:
        return []  # names are fixed; skip the registry's collect() at register time

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        labels = ["pool", "target"]

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)

        def gauge(name: str, doc: str, lbl: list[str] = labels) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=lbl)

        created = counter("connections_created", "TCP connections opened.")
        reused = counter("connections_reused", "Requests served on a kept-alive connection.")
        requests = counter("requests", "HTTP attempts sent (each retry counts).")
        in_flight = gauge("requests_in_flight", "Requests sent and awaiting response headers.")
        waiting = gauge("requests_waiting", "Requests waiting for a pool slot.")
        retries = counter("retries", "Retries scheduled.")
        errors = CounterMetricFamily(
            f"{PREFIX}_request_errors",
            "Failed attempts by kind (exception class or http_<status>).",
            labels=[*labels, "kind"],
        )
        duration = HistogramMetricFamily(
            f"{PREFIX}_request_duration_seconds",
            "Attempt latency, slot wait excluded.",
            labels=labels,
        )
        pool_wait = HistogramMetricFamily(
            f"{PREFIX}_pool_wait_seconds", "Time spent waiting for a pool slot.", labels=labels
        )
        limit = gauge("pool_limit", "Configured connection limits.", ["pool", "scope"])

        for pool in self.pools():
            name = pool.name
            limit.add_metric([name, "total"], pool.limits.limit)
            limit.add_metric([name, "per_host"], pool.limits.limit_per_host)
            for target, tm in list(pool.metrics.targets.items()):
                lv = [name, target]
                created.add_metric(lv, tm.connections_created)
                reused.add_metric(lv, tm.connections_reused)
                requests.add_metric(lv, tm.requests)
                in_flight.add_metric(lv, tm.in_flight)
                waiting.add_metric(lv, tm.waiting)
                retries.add_metric(lv, tm.retries)
                for kind, n in list(tm.errors.items()):
                    errors.add_metric([*lv, kind], n)
                duration.add_metric(lv, tm.latency.cumulative_buckets(), tm.latency.sum)
                pool_wait.add_metric(lv, tm.queue_wait.cumulative_buckets(), tm.queue_wait.sum)
        yield from (created, reused, requests, in_flight, waiting, retries, errors)
        yield from (duration, pool_wait, limit)


_registered: weakref.WeakKeyDictionary[CollectorRegistry, PoolCollector] = (
    weakref.WeakKeyDictionary()
)


def pool_metrics_collector(*pools: MeteredPool) -> PoolCollector:
    """A collector for ``pools`` (all open pools if none given). Register it yourself."""
    return PoolCollector(*pools)


def register_pool_metrics(registry: CollectorRegistry, *pools: MeteredPool) -> PoolCollector:
    """Expose ``pools`` (or, with none, every open pool) in ``registry``.

    Idempotent per registry: later calls add their pools to the collector already
    registered there, so several pools never produce "Duplicated timeseries".
    """
    existing = _registered.get(registry)
    if existing is not None:
        if not pools:
            existing._all = True
        for p in pools:
            existing.add(p)
        return existing
    collector = PoolCollector(*pools)
    registry.register(collector)
    _registered[registry] = collector
    return collector


def render_prometheus(*pools: MeteredPool) -> str:
    """Prometheus text exposition for ``pools`` (all open pools if none given)."""
    from prometheus_client.core import CollectorRegistry
    from prometheus_client.exposition import generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(*pools))
    return generate_latest(registry).decode("utf-8")
