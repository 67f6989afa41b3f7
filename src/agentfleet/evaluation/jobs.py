"""Evaluation jobs: submit with an idempotency key, run by a bounded set of workers.

:class:`JobManager` owns the in-memory queue, the worker tasks and one
:class:`asyncio.Event` per awaited job (long polls wait on it, no sleep loops). The
:class:`~agentfleet.evaluation.store.JobStore` is the source of truth: a job is marked
``running`` before its evaluation and gets its result in one guarded update after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agentfleet.evaluation.schema import EvalRequest, EvalResult
from agentfleet.evaluation.store import DONE, FAILED, RUNNING, JobRecord, JobStore
from agentfleet.http.retry import is_transport_error

logger = logging.getLogger("agentfleet.evaluation")


@runtime_checkable
class EvaluatorLike(Protocol):
    """Anything that scores one submission. An optional ``check(req)`` method (sync or
    async) validates a request at submit time: raising ``LookupError`` (``TaskNotFound``)
    answers 404, ``ValueError`` or a ``BadSubmission`` answers 422."""

    async def evaluate(self, req: EvalRequest) -> EvalResult: ...


class TestModeEvaluator:
    """Test mode: each evaluation sleeps ``latency`` seconds and scores 1.0 / 1.0."""

    __test__ = False  # not a pytest class

    def __init__(self, latency: float) -> None:
        self.latency = latency

    async def evaluate(self, req: EvalRequest) -> EvalResult:
        await asyncio.sleep(self.latency)
        return EvalResult(
            reward=1.0,
            speedup=1.0,
            info={
                "test_mode": True,
                "instance_id": req.instance_id,
                "dataset_name": req.dataset_name,
                "split": req.split,
                "latency_s": self.latency,
            },
        )


# errors -----------------------------------------------------------------------------
class SubmitError(Exception):
    """A submission refused before it became a job; ``status`` is the HTTP status."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class QueueFull(SubmitError):
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IdempotencyConflict(SubmitError):
    status = 422


# helpers ----------------------------------------------------------------------------
def body_hash(req: EvalRequest) -> str:
    """sha256 of the canonical JSON of the request fields, the idempotency key left out."""
    fields = req.model_dump(mode="json", exclude={"idempotency_key"})
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _finite(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return 0.0
    return v if math.isfinite(v) else 0.0


def _json_safe(obj: Any) -> Any:
    """Make ``obj`` strict-JSON encodable (no NaN/inf, no odd types)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return str(obj)


def _coerce_result(res: Any) -> dict[str, Any]:
    reward: Any
    speedup: Any
    info: Any
    if isinstance(res, EvalResult):
        reward, speedup, info = res.reward, res.speedup, res.info
    elif isinstance(res, tuple) and len(res) == 3:
        reward, speedup, info = res
    elif isinstance(res, dict):
        reward, speedup, info = res.get("reward"), res.get("speedup"), res.get("info")
    else:
        raise TypeError(f"evaluator returned {type(res).__name__}, not an EvalResult")
    return {
        "reward": _finite(reward),
        "speedup": _finite(speedup),
        "info": _json_safe(info) if isinstance(info, dict) else {},
    }


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def submit_status_for(exc: Exception) -> int | None:
    """HTTP status for an exception raised by ``evaluator.check`` (None: not a rejection)."""
    if isinstance(exc, LookupError):  # TaskNotFound
        return 404
    if isinstance(exc, ValueError) or type(exc).__name__ in {"BadSubmission", "BadRequest"}:
        return 422
    status = getattr(exc, "status", None)
    if isinstance(status, int) and 400 <= status < 500:
        return status
    return None


# metrics ----------------------------------------------------------------------------
class EvalMetrics:
    """Prometheus metrics in a per-app registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.submitted = Counter(
            "agentfleet_eval_jobs_submitted", "Evaluation jobs accepted", registry=r
        )
        self.deduplicated = Counter(
            "agentfleet_eval_jobs_deduplicated",
            "Submissions answered with an existing job (same idempotency key)",
            registry=r,
        )
        self.rejected = Counter(
            "agentfleet_eval_jobs_rejected", "Submissions refused", ["reason"], registry=r
        )
        self.completed = Counter(
            "agentfleet_eval_jobs_completed", "Evaluation jobs finished done", registry=r
        )
        self.failed = Counter(
            "agentfleet_eval_jobs_failed", "Evaluation jobs finished failed", registry=r
        )
        self.queue_depth = Gauge(
            "agentfleet_eval_queue_depth", "Jobs waiting for a worker", registry=r
        )
        self.running = Gauge("agentfleet_eval_jobs_running", "Jobs being evaluated", registry=r)
        self.duration = Histogram(
            "agentfleet_eval_duration_seconds",
            "Evaluation duration",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.speedup = Histogram(
            "agentfleet_eval_speedup",
            "Speedup of finished evaluations",
            buckets=(0, 0.5, 0.8, 0.95, 1.0, 1.05, 1.2, 1.5, 2, 3, 5, 10, 100),
            registry=r,
        )


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
class _Counters:
    in_flight: int = 0
    peak_in_flight: int = 0
    completed: int = 0
    clients: PeerCounter = field(default_factory=PeerCounter)


_RECENT_JOBS = 10_000  # finished jobs kept in memory for polls


class JobManager:
    """Queue + workers + long-poll events over a :class:`JobStore`.

    ``workers=None`` runs every job at once (test mode); otherwise at most ``workers``
    evaluations run concurrently. ``queue_limit`` bounds the jobs waiting for a worker.
    """

    def __init__(
        self,
        store: JobStore,
        evaluator: EvaluatorLike,
        *,
        workers: int | None,
        queue_limit: int = 1000,
        metrics: EvalMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError("workers must be >= 1 (or None for no limit)")
        self.store = store
        self.evaluator = evaluator
        self.workers = workers
        self.queue_limit = queue_limit
        self.metrics = metrics or EvalMetrics()
        self._clock = clock
        self._queue: asyncio.Queue[tuple[str, EvalRequest]] = asyncio.Queue()
        self._reserved = 0
        self._running = 0
        self._events: dict[str, asyncio.Event] = {}
        # Jobs queued or running here, and the latest finished ones: polls skip the store.
        self._live: dict[str, JobRecord] = {}
        self._recent: OrderedDict[str, JobRecord] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._mean_duration: float | None = None
        self._counters = _Counters()
        self._started = False
        self._stopping = False

    # lifecycle -----------------------------------------------------------------------
    async def start(self) -> int:
        """Re-queue unfinished jobs from the store, then start the workers."""
        pending = await self.store.unfinished()
        for job in pending:
            try:
                req = EvalRequest.model_validate(job.request)
            except Exception as exc:  # stored request no longer valid: fail it, keep going
                await self.store.mark_running(job.id)
                await self.store.finish(job.id, FAILED, _failed_result(exc), _error_text(exc))
                continue
            self._live[job.id] = job
            self._queue.put_nowait((job.id, req))
        if pending:
            logger.info("re-queued %d unfinished evaluation job(s)", len(pending))
        self._update_gauges()
        n = self.workers if self.workers is not None else 1
        target = self._worker if self.workers is not None else self._dispatcher
        for i in range(n):
            self._spawn(target(), name=f"eval-worker-{i}")
        self._started = True
        return len(pending)

    async def stop(self) -> None:
        """Cancel the workers and any running evaluation, and wait for them.

        Interrupted jobs stay ``running`` in the store and run again at the next start.
        """
        self._stopping = True
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        for ev in self._events.values():  # wake long polls still waiting
            ev.set()
        self._events.clear()

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # submit / query ------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> int:
        return self._running

    def retry_after(self) -> int:
        """Seconds until a worker is likely free: mean duration / workers, in [1, 60]."""
        mean = self._mean_duration if self._mean_duration is not None else 1.0
        per_slot = mean / (self.workers or 1)
        return int(min(60, max(1, math.ceil(per_slot))))

    async def submit(self, req: EvalRequest, idem_key: str | None) -> tuple[JobRecord, bool]:
        """A new queued job, or the job already under ``idem_key``: ``(job, created)``.

        Raises :class:`IdempotencyConflict` (same key, other body), :class:`QueueFull`,
        or a :class:`SubmitError` from the evaluator's ``check`` (unknown task...).
        """
        digest = body_hash(req)
        if idem_key is not None and (self._full() or self._has_check):
            existing = await self.store.get_by_key(idem_key)
            if existing is not None:  # a known key is answered by its job, unchecked
                return self._same_job(existing, digest), False
        # Checked again after the await above, and the slot taken with no await in between:
        # concurrent submits cannot all pass a check made before any of them reserved.
        if self._full():
            self.metrics.rejected.labels("queue_full").inc()
            raise QueueFull(
                f"evaluation queue is full ({self.queue_limit} jobs waiting); retry later",
                self.retry_after(),
            )
        self._reserved += 1  # released below whatever happens; the queue entry replaces it
        try:
            if self._has_check:
                await self._check(req)
            stored = req.model_dump(mode="json")
            stored["idempotency_key"] = idem_key
            job, created = await self.store.create_or_get(idem_key, digest, stored)
        finally:
            self._reserved -= 1
        if not created:
            return self._same_job(job, digest), False
        self._live[job.id] = job
        self._queue.put_nowait((job.id, req.model_copy(update={"idempotency_key": idem_key})))
        self.metrics.submitted.inc()
        self._update_gauges()
        return job, True

    def _full(self) -> bool:
        return self._queue.qsize() + self._reserved >= self.queue_limit

    @property
    def _has_check(self) -> bool:
        return callable(getattr(self.evaluator, "check", None))

    async def _check(self, req: EvalRequest) -> None:
        try:
            await run_check(self.evaluator, req)
        except Exception as exc:
            status = submit_status_for(exc)
            if status is None:
                raise
            self.metrics.rejected.labels(f"http_{status}").inc()
            raise SubmitError(str(exc) or type(exc).__name__, status) from exc

    def _same_job(self, job: JobRecord, digest: str) -> JobRecord:
        if job.body_hash != digest:
            self.metrics.rejected.labels("idempotency_conflict").inc()
            raise IdempotencyConflict(
                "idempotency key already used for a different request body "
                f"(job {job.id}); use a new key for a new submission"
            )
        self.metrics.deduplicated.inc()
        return job

    async def get(self, job_id: str) -> JobRecord | None:
        """The job: from memory for jobs this server ran lately, else from the store."""
        job = self._live.get(job_id) or self._recent.get(job_id)
        if job is not None:
            return job
        return await self.store.get(job_id)

    async def wait(self, job_id: str, wait_s: float | None) -> JobRecord | None:
        """The job once terminal, or as it is when ``wait_s`` (None: no limit) expires."""
        job = await self.get(job_id)
        if job is None or job.terminal or (wait_s is not None and wait_s <= 0):
            return job
        if self._stopping:
            return job
        event = self._events.get(job_id)
        if event is None:
            event = self._events[job_id] = asyncio.Event()
        # Read again after registering the event: a finish in between is not missed.
        job = await self.get(job_id)
        if job is None or job.terminal:
            return job
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await event.wait()
        return await self.get(job_id)

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
        }

    def reset_stats(self) -> None:
        c = self._counters
        c.peak_in_flight = c.in_flight
        c.completed = 0
        c.clients.clear()

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(self._queue.qsize())
        self.metrics.running.set(self._running)

    # workers -------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            job_id, req = await self._queue.get()
            self._update_gauges()
            await self._run(job_id, req)

    async def _dispatcher(self) -> None:
        """No worker limit: one task per job, all owned by this manager."""
        while True:
            job_id, req = await self._queue.get()
            self._update_gauges()
            self._spawn(self._run(job_id, req), name=f"eval-job-{job_id}")

    async def _run(self, job_id: str, req: EvalRequest) -> None:
        c = self._counters
        self._running += 1
        c.in_flight += 1
        c.peak_in_flight = max(c.peak_in_flight, c.in_flight)
        self._update_gauges()
        try:
            await self._run_inner(job_id, req)
        except Exception:  # a store failure: keep the worker alive, the job stays unfinished
            logger.exception("job %s: could not record its state", job_id)
        finally:
            self._running -= 1
            c.in_flight -= 1
            self._update_gauges()

    async def _run_inner(self, job_id: str, req: EvalRequest) -> None:
        if not await self.store.mark_running(job_id):
            self._live.pop(job_id, None)
            self._wake(job_id)  # already finished (a duplicate queue entry)
            return
        job = self._live.get(job_id)
        if job is not None:
            self._live[job_id] = replace(
                job, status=RUNNING, attempts=job.attempts + 1, started=time.time()
            )
        logger.info("job %s started: instance %s", job_id, req.instance_id)
        t0 = self._clock()
        status, error = DONE, None
        try:
            res = await self.evaluator.evaluate(req)
            result = _coerce_result(res)
        except asyncio.CancelledError:
            logger.info("job %s interrupted: it stays queued for the next start", job_id)
            raise
        except Exception as exc:
            status, error = FAILED, _error_text(exc)
            result = _failed_result(exc)
            logger.warning("job %s failed: %s", job_id, error)
        elapsed = self._clock() - t0
        # The result lands even if we are cancelled from here on (shutdown).
        await asyncio.shield(self._finish(job_id, status, result, error, elapsed))

    async def _finish(
        self, job_id: str, status: str, result: dict[str, Any], error: str | None, elapsed: float
    ) -> None:
        try:
            landed = await self.store.finish(job_id, status, result, error)
            job = self._live.pop(job_id, None)
            if landed and job is not None:
                self._remember(
                    replace(job, status=status, result=result, error=error, finished=time.time())
                )
        finally:
            self._wake(job_id)
        if not landed:
            return
        self._counters.completed += 1
        self._mean_duration = (
            elapsed if self._mean_duration is None else 0.8 * self._mean_duration + 0.2 * elapsed
        )
        self.metrics.duration.observe(elapsed)
        if status == DONE:
            self.metrics.completed.inc()
            self.metrics.speedup.observe(result["speedup"])
        else:
            self.metrics.failed.inc()
        logger.info(
            "job %s %s in %.2fs: reward %.3f speedup %.3f",
            job_id,
            status,
            elapsed,
            result["reward"],
            result["speedup"],
        )

    def _remember(self, job: JobRecord) -> None:
        self._recent[job.id] = job
        while len(self._recent) > _RECENT_JOBS:
            self._recent.popitem(last=False)

    def _wake(self, job_id: str) -> None:
        event = self._events.pop(job_id, None)
        if event is not None:
            event.set()


def _failed_result(exc: BaseException) -> dict[str, Any]:
    info: dict[str, Any] = {"error": _error_text(exc), "error_type": type(exc).__name__}
    status = submit_status_for(exc) if isinstance(exc, Exception) else None
    if status is not None:  # the request itself was bad (unknown task, no patch)
        info["status_code"] = status
    if is_transport_error(exc):  # e.g. the sandbox server stayed unreachable: a client
        info["transient"] = True  # may submit the work again (a new key, a new job)
    return {"reward": 0.0, "speedup": 0.0, "info": info}


async def run_check(evaluator: Any, req: EvalRequest) -> None:
    """Call ``evaluator.check(req)`` when it exists (a sync one runs in a thread)."""
    check = getattr(evaluator, "check", None)
    if check is None or not callable(check):
        return
    if inspect.iscoroutinefunction(check):
        await check(req)
        return
    out = await asyncio.to_thread(check, req)
    if inspect.isawaitable(out):
        await out
