"""What the evaluation server counts and shows of its jobs: counts, stats, the workers'
slots and CPU sets, throughput and queue wait (a base of
:class:`~agentfleet.evaluation.jobs.JobManager`, which owns the attributes)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import Any

from agentfleet.evaluation.jobstats import EvalMetrics, JobCounters
from agentfleet.evaluation.leases import LeaseBook
from agentfleet.evaluation.pinning import CpuSet, format_cpus


class JobViews:
    """Read-only views and gauges over a job manager's state."""

    workers: int | None
    cpu_sets: list[CpuSet] | None
    metrics: EvalMetrics
    leases: LeaseBook
    _queue: asyncio.Queue[str]
    _running: int
    _busy: list[str | None]
    _counters: JobCounters
    _finished_at: deque[float]
    _mean_queue_wait: float | None
    _mean_duration: float | None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> int:
        return self._running + self.leases.remote_count()

    def retry_after(self) -> int:
        """Seconds until a worker is likely free: mean duration / workers (local and remote
        ones seen lately), in [1, 60]."""
        mean = self._mean_duration if self._mean_duration is not None else 1.0
        per_slot = mean / max(1, (self.workers or 0) + len(self.leases.remote_view()))
        return int(min(60, max(1, math.ceil(per_slot))))

    # stats ---------------------------------------------------------------------------
    def note_client(self, client: tuple[str, int] | None) -> None:
        """Record the (host, port) of a request: distinct pairs ~ TCP connections seen."""
        if client is not None:
            self._counters.clients.add(client[0], client[1])

    def stats(self) -> dict[str, Any]:
        c = self._counters
        return {
            "connections_seen": c.clients.count,
            "connections_seen_saturated": c.clients.saturated,
            "in_flight": c.in_flight,
            "peak_in_flight": c.peak_in_flight,
            "completed": c.completed,
            "queued": self.queued,
            "running": self.running,
            "workers": self.workers,
            "remote_leases": self.leases.remote_count(),
            "worker_slots": self.workers_view(),
            "queue_wait_mean_s": self._mean_queue_wait,
            "throughput_per_minute": self.throughput_per_minute(),
        }

    def reset_stats(self) -> None:
        c = self._counters
        c.peak_in_flight = c.in_flight
        c.completed = 0
        c.clients.clear()

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(self._queue.qsize())
        self.metrics.running.set(self.running)

    def _cpus_text(self, index: int) -> str | None:
        return format_cpus(self.cpu_sets[index]) if self.cpu_sets else None

    def _worker_gauge(self, index: int) -> Any:
        return self.metrics.worker_busy.labels(str(index), self._cpus_text(index) or "any")

    def workers_view(self) -> list[dict[str, Any]]:
        """Each local worker: its CPU set (None: not pinned) and the job it runs (None:
        idle); then the remote workers (busy, or seen lately), with their node."""
        local: list[dict[str, Any]] = [
            {"worker": i, "cpus": self._cpus_text(i), "remote": False, "job_id": job_id}
            for i, job_id in enumerate(self._busy)
        ]
        return local + self.leases.remote_view()

    def _count_finished(self, done: bool, speedup: float, elapsed: float) -> None:
        """A job's outcome landed: the counters, the throughput window, the durations."""
        self._counters.completed += 1
        self._finished_at.append(time.monotonic())
        self.throughput_per_minute()  # drops what is older than a minute: bounded
        mean = self._mean_duration
        self._mean_duration = elapsed if mean is None else 0.8 * mean + 0.2 * elapsed
        self.metrics.duration.observe(elapsed)
        if done:
            self.metrics.completed.inc()
            self.metrics.speedup.observe(speedup)
        else:
            self.metrics.failed.inc()

    def throughput_per_minute(self) -> float:
        """Evaluations finished in the last 60 s."""
        horizon = time.monotonic() - 60.0
        while self._finished_at and self._finished_at[0] < horizon:
            self._finished_at.popleft()
        return float(len(self._finished_at))

    @property
    def mean_queue_wait(self) -> float | None:
        """Exponentially weighted mean of the time jobs waited for a worker (s)."""
        return self._mean_queue_wait


__all__ = ["JobViews"]
