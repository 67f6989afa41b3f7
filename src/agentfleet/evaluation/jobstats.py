"""Counters of the evaluation server's jobs: Prometheus metrics (per app registry) and
in-process stats (in flight, peak, distinct client connections)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class EvalMetrics:
    """Prometheus metrics in a per-app registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        counter = functools.partial(_named, Counter, self.registry)
        gauge = functools.partial(_named, Gauge, self.registry)
        histogram = functools.partial(_named, Histogram, self.registry)
        self.submitted = counter("jobs_submitted", "Evaluation jobs accepted")
        self.deduplicated = counter(
            "jobs_deduplicated", "Submissions answered with an existing job (same idempotency key)"
        )
        self.rejected = counter("jobs_rejected", "Submissions refused", labelnames=["reason"])
        self.completed = counter("jobs_completed", "Evaluation jobs finished done")
        self.failed = counter("jobs_failed", "Evaluation jobs finished failed")
        self.queue_depth = gauge("queue_depth", "Jobs waiting for a worker")
        self.running = gauge("jobs_running", "Jobs being evaluated")
        self.duration = histogram(
            "duration_seconds",
            "Evaluation duration",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
        )
        self.queue_wait = histogram(
            "queue_wait_seconds",
            "Time from submit to a worker starting the job",
            buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
        )
        self.worker_busy = gauge(
            "worker_busy",
            "1 while the worker runs a job; cpus: the CPU set its commands are pinned to",
            labelnames=["worker", "cpus"],
        )
        self.throughput = gauge(
            "throughput_per_minute", "Evaluations finished over the last minute"
        )
        self.leases_expired = counter(
            "leases_expired",
            "Remote workers' leases that lapsed without a heartbeat (their jobs queued again)",
        )
        self.leases_released = counter(
            "leases_released",
            "Remote leases handed back by a stopping worker (their jobs queued again at once)",
        )
        self.results_refused = counter(
            "results_refused", "Results posted under an expired or replaced lease (not stored)"
        )
        self.remote_workers = gauge(
            "remote_workers", "Remote workers busy, or seen asking for work lately"
        )
        self.speedup = histogram(
            "speedup",
            "Speedup of finished evaluations",
            buckets=(0, 0.5, 0.8, 0.95, 1.0, 1.05, 1.2, 1.5, 2, 3, 5, 10, 100),
        )


_M = TypeVar("_M", Counter, Gauge, Histogram)


def _named(
    kind: Callable[..., _M], registry: CollectorRegistry, name: str, doc: str, **kw: Any
) -> _M:
    """A metric ``agentfleet_eval_<name>`` in ``registry``."""
    return kind(f"agentfleet_eval_{name}", doc, registry=registry, **kw)


class PeerCounter:
    """Distinct (host, port) pairs seen, in bounded memory: one 8 KiB bitmap of ports per
    host, for at most ``max_hosts`` hosts (2 MiB at the default 256). Exact while within
    that; pairs from further hosts are not counted and ``saturated`` turns true."""

    def __init__(self, max_hosts: int = 256) -> None:
        self.max_hosts = max_hosts
        self._ports: dict[str, bytearray] = {}
        self.count = 0
        self.saturated = False

    def add(self, host: str, port: int) -> None:
        bits = self._ports.get(host)
        if bits is None:
            if len(self._ports) >= self.max_hosts:
                self.saturated = True
                return
            bits = self._ports[host] = bytearray(8192)
        port &= 0xFFFF
        byte, mask = port >> 3, 1 << (port & 7)
        if not bits[byte] & mask:
            bits[byte] |= mask
            self.count += 1

    def clear(self) -> None:
        self._ports.clear()
        self.count = 0
        self.saturated = False


@dataclass
class JobCounters:
    in_flight: int = 0
    peak_in_flight: int = 0
    completed: int = 0
    clients: PeerCounter = field(default_factory=PeerCounter)


__all__ = ["EvalMetrics", "JobCounters", "PeerCounter"]
