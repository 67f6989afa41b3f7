"""Evaluation jobs: submit with an idempotency key, run by a bounded set of workers.

:class:`JobManager` owns the in-memory queue, the local worker tasks, the leases
(:mod:`~agentfleet.evaluation.leases`: local workers and remote ones, see
:mod:`~agentfleet.evaluation.remote`, take jobs from the same queue) and one
:class:`asyncio.Event` per awaited job (long polls wait on it, no sleep loops). The
:class:`~agentfleet.evaluation.store.JobStore` is the source of truth: a job is marked
``running`` under a lease before its evaluation and gets its result in one update guarded
by that lease after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from agentfleet.evaluation.eval_pool import delete_left, job_label, label_of
from agentfleet.evaluation.jobstats import EvalMetrics, JobCounters, PeerCounter
from agentfleet.evaluation.jobviews import JobViews
from agentfleet.evaluation.leases import DEFAULT_LEASE_TTL_S, Lease, LeaseBook
from agentfleet.evaluation.outcome import (
    coerce_result,
    error_text,
    failed_result,
    submit_status_for,
)
from agentfleet.evaluation.pinning import CpuSet, worker_cpus
from agentfleet.evaluation.schema import EvalRequest
from agentfleet.evaluation.store import DONE, FAILED, QUEUED, RUNNING, JobRecord, JobStore
from agentfleet.evaluation.submission import (
    EvaluatorLike,
    IdempotencyConflict,
    QueueFull,
    SubmitError,
    TestModeEvaluator,
    body_hash,
    run_check,
)

logger = logging.getLogger("agentfleet.evaluation")


_RECENT_JOBS = 10_000  # finished jobs kept in memory for polls (summaries: no patches)
DEFAULT_KEEP_DAYS = 7.0  # finished jobs older than this are pruned from the store
DEFAULT_MAX_ATTEMPTS = 3  # starts of a job that never finishes before it is failed
PRUNE_EVERY_S = 3600.0


class JobManager(JobViews):
    """Queue + workers + long-poll events over a :class:`JobStore`.

    ``workers=None`` runs every job at once (test mode); otherwise at most ``workers``
    evaluations run concurrently here (0: none, remote workers lease every job; a remote
    lease lapses ``lease_ttl_s`` after its last heartbeat and its job is queued again).
    ``queue_limit`` bounds the jobs waiting for a worker.

    Memory holds job summaries only (no patch: a worker reads it from the store when the
    job starts). ``keep_days`` (None: forever): finished jobs older than that are deleted
    from the store at start and every ``prune_every_s``. ``max_attempts`` (None: no cap):
    a job found unfinished at start after that many starts (each ended by a stop or a
    crash of the server) is failed with the reason instead of being run again.
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
        keep_days: float | None = DEFAULT_KEEP_DAYS,
        max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
        prune_every_s: float = PRUNE_EVERY_S,
        cpu_sets: Sequence[CpuSet] | None = None,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
        worker_spec: dict[str, Any] | None = None,
    ) -> None:
        if workers is not None and workers < 0:
            raise ValueError("workers must be >= 0 (or None for no limit)")
        if cpu_sets is not None and (workers is None or len(cpu_sets) != workers):
            raise ValueError("cpu_sets needs one CPU set per worker")
        self.cpu_sets = list(cpu_sets) if cpu_sets is not None else None
        if keep_days is not None and keep_days <= 0:
            raise ValueError("keep_days must be > 0 (or None to keep every job)")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 (or None for no cap)")
        self.keep_days = keep_days
        self.max_attempts = max_attempts
        self.prune_every_s = prune_every_s
        self.store = store
        self.evaluator = evaluator
        self.workers = workers
        self.queue_limit = queue_limit
        self.metrics = metrics or EvalMetrics()
        self.leases = LeaseBook(lease_ttl_s)
        self.worker_spec = worker_spec or {}  # what remote workers evaluate with
        self._clock = clock
        self._queue: asyncio.Queue[str] = asyncio.Queue()  # job ids: requests stay in the store
        self._reserved = 0
        self._running = 0
        self._events: dict[str, asyncio.Event] = {}
        # Jobs queued or running here, and the latest finished ones: polls skip the store.
        self._live: dict[str, JobRecord] = {}
        self._recent: OrderedDict[str, JobRecord] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._mean_duration: float | None = None
        self._counters = JobCounters()
        self._busy: list[str | None] = [None] * (workers or 0)  # job id per worker
        self._finished_at: deque[float] = deque()  # monotonic times, the last minute's
        self._mean_queue_wait: float | None = None
        self.metrics.throughput.set_function(self.throughput_per_minute)
        self._started = False
        self._closing = asyncio.Event()  # set by drain(): long polls answer now

    # lifecycle -----------------------------------------------------------------------
    async def start(self) -> int:
        """Prune old jobs, re-queue unfinished ones (failing those started ``max_attempts``
        times already), then start the workers (and the pruner). Returns the re-queued."""
        await self.prune()
        requeued = 0
        unfinished = await self.store.unfinished(summary=True)
        # jobs a killed server was running: delete the sandboxes they left (in the
        # background: an unreachable sandbox server does not hold up the start)
        if left := {label_of(j.id) for j in unfinished if j.attempts}:
            sandboxes = getattr(self.evaluator, "sandboxes", None)
            self._spawn(delete_left(sandboxes, left), name="eval-delete-left")
        for job in unfinished:
            if self.max_attempts is not None and job.attempts >= self.max_attempts:
                await self._give_up(job)
                continue
            self._live[job.id] = job
            self._queue.put_nowait(job.id)
            requeued += 1
        if requeued:
            logger.info("re-queued %d unfinished evaluation job(s)", requeued)
        self._update_gauges()
        if self.workers is None:
            self._spawn(self._dispatcher(), name="eval-dispatcher")
        for i in range(self.workers or 0):
            self._spawn(self._worker(i), name=f"eval-worker-{i}")
            self._worker_gauge(i).set(0)
        if self.keep_days is not None and self.prune_every_s > 0:
            self._spawn(self._pruner(), name="eval-pruner")
        self._started = True
        return requeued

    async def _give_up(
        self, job: JobRecord, why: str = "the server stopped or crashed during each"
    ) -> None:
        error = (
            f"started {job.attempts} times without finishing ({why}); "
            f"not run again (max attempts {self.max_attempts})"
        )
        result = {"reward": 0.0, "speedup": 0.0, "info": {"error": error}}
        await self.store.fail_unfinished(job.id, result, error)
        self.metrics.failed.inc()
        logger.warning("job %s failed: %s", job.id, error)

    async def prune(self) -> int:
        """Delete finished jobs older than ``keep_days`` (store and memory); their count."""
        if self.keep_days is None:
            return 0
        cutoff = time.time() - self.keep_days * 86400.0
        pruned = await self.store.prune(cutoff)
        for job_id in [k for k, j in self._recent.items() if (j.finished or 0) < cutoff]:
            del self._recent[job_id]
        if pruned:
            logger.info(
                "pruned %d evaluation job(s) finished over %g days ago", pruned, self.keep_days
            )
        return pruned

    async def _pruner(self) -> None:
        while True:
            await asyncio.sleep(self.prune_every_s)
            try:
                await self.prune()
            except Exception:  # a busy or broken store: try again next time
                logger.exception("pruning evaluation jobs failed")

    async def stop(self) -> None:
        """Cancel the workers and any running evaluation, and wait for them.

        Interrupted jobs stay ``running`` in the store and run again at the next start.
        """
        self.drain()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._events.clear()

    def drain(self) -> None:
        """The server is closing: long polls answer now (a job wait with the job as it is, a
        lease ask with none), new ones do not wait; jobs run on until :meth:`stop`."""
        self._closing.set()
        for ev in self._events.values():
            ev.set()

    @property
    def draining(self) -> bool:
        return self._closing.is_set()

    async def closing(self) -> None:  # returns once drain() was called
        await self._closing.wait()

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # submit / query ------------------------------------------------------------------
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
        self._live[job.id] = job.summary()
        self._queue.put_nowait(job.id)
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
        if self.draining:
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

    # workers -------------------------------------------------------------------------
    async def _worker(self, index: int) -> None:
        # This task's commands (and those of every task it starts) run on its CPU set.
        worker_cpus.set(self.cpu_sets[index] if self.cpu_sets else None)
        gauge = self._worker_gauge(index)
        while (job_id := await self.take()) is not None:
            lease = self.leases.grant(job_id, f"local-{index}", cpus=self._cpus_text(index))
            self._update_gauges()
            self._busy[index] = job_id
            gauge.set(1)
            try:
                await self._run(job_id, lease)
            finally:
                self._busy[index] = None
                gauge.set(0)

    async def _dispatcher(self) -> None:
        """No worker limit: one task per job, all owned by this manager."""
        while (job_id := await self.take()) is not None:
            lease = self.leases.grant(job_id, "local")
            self._update_gauges()
            self._spawn(self._run(job_id, lease), name=f"eval-job-{job_id}")

    async def _run(self, job_id: str, lease: Lease) -> None:
        c = self._counters
        self._running += 1
        c.in_flight += 1
        c.peak_in_flight = max(c.peak_in_flight, c.in_flight)
        self._update_gauges()
        try:
            await self._run_inner(job_id, lease)
        except Exception:  # a store failure: keep the worker alive, the job stays unfinished
            logger.exception("job %s: could not record its state", job_id)
        finally:
            self.leases.end(lease.id)  # (finish ended it already, unless the store failed)
            self._running -= 1
            c.in_flight -= 1
            self._update_gauges()

    async def begin(self, job_id: str, lease: Lease) -> bool:
        """Mark the job running under ``lease``; False (lease ended) if it already
        finished (a duplicate queue entry)."""
        if not await self.store.mark_running(job_id, lease.id):
            self.leases.end(lease.id)
            self._live.pop(job_id, None)
            self._wake(job_id)
            return False
        job = self._live.get(job_id)
        if job is not None:
            waited = max(0.0, time.time() - job.created)
            self.metrics.queue_wait.observe(waited)
            m = self._mean_queue_wait
            self._mean_queue_wait = waited if m is None else 0.8 * m + 0.2 * waited
            self._live[job_id] = replace(
                job, status=RUNNING, attempts=job.attempts + 1, started=time.time()
            )
        self._update_gauges()
        return True

    async def take(self, wait_s: float | None = None) -> str | None:
        """The next queued job id, waiting up to ``wait_s`` (None: no limit); None if none
        came, or once draining (a closing server starts no job: it would be cancelled at
        :meth:`stop`, its start counted). The caller grants a lease before its next await
        (a cancelled take loses no job)."""
        if self.draining:
            return None
        get = asyncio.ensure_future(self._queue.get())
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait((get, closing), timeout=wait_s, return_when="FIRST_COMPLETED")
        except BaseException:  # cancelled: a job already taken goes back
            if get.done() and not get.cancelled():
                self.untake(get.result())
            raise
        finally:
            closing.cancel()
            get.cancel()  # a no-op once it has the job
        job_id = get.result() if get.done() and not get.cancelled() else None
        self._update_gauges()
        if job_id is not None and self.draining:
            self.untake(job_id)
            return None
        return job_id

    def untake(self, job_id: str) -> None:
        """A job :meth:`take` gave to a taker that went away before any lease: queued
        again (at the back)."""
        self._queue.put_nowait(job_id)
        self._update_gauges()

    async def requeue(self, job: JobRecord) -> None:
        """A released job (its lease expired or was handed back) back in the queue, or
        failed once it was started ``max_attempts`` times."""
        if self.max_attempts is not None and job.attempts >= self.max_attempts:
            await self._give_up(job, "its worker was lost")
            self._live.pop(job.id, None)
            self._wake(job.id)
        else:
            self._live[job.id] = replace(job.summary(), status=QUEUED)
            self._queue.put_nowait(job.id)
        self._update_gauges()

    async def _run_inner(self, job_id: str, lease: Lease) -> None:
        if not await self.begin(job_id, lease):
            return
        t0 = self._clock()
        status, error = DONE, None
        try:
            req = await self._request_of(job_id)  # the patch, from the store
            logger.info("job %s started: instance %s", job_id, req.instance_id)
            label = job_label.set(label_of(job_id))  # its sandboxes' label
            try:
                res = await self.evaluator.evaluate(req)
            finally:
                job_label.reset(label)
            result = coerce_result(res)
        except asyncio.CancelledError:
            logger.info("job %s interrupted: it stays queued for the next start", job_id)
            raise
        except Exception as exc:
            status, error = FAILED, error_text(exc)
            result = failed_result(exc)
            logger.warning("job %s failed: %s", job_id, error)
        elapsed = self._clock() - t0
        # The result lands even if we are cancelled from here on (shutdown).
        await asyncio.shield(self.finish(lease, status, result, error, elapsed))

    async def finish(
        self, lease: Lease, status: str, result: dict[str, Any], error: str | None, elapsed: float
    ) -> bool:
        """Store the job's outcome under ``lease`` (ended); False if it did not land (the
        lease expired or was replaced: the job is someone else's now)."""
        job_id = lease.job_id
        self.leases.end(lease.id)
        landed = False
        try:
            landed = await self.store.finish(job_id, status, result, error, lease.id)
            job = self._live.pop(job_id, None)
            if landed and job is not None:
                self._remember(
                    replace(job, status=status, result=result, error=error, finished=time.time())
                )
        finally:
            self._wake(job_id)
            self._update_gauges()
        if landed:
            self._count_finished(status == DONE, result["speedup"], elapsed)
            logger.info(
                "job %s %s in %.2fs: reward %.3f speedup %.3f",
                *(job_id, status, elapsed, result["reward"], result["speedup"]),
            )
        return landed

    async def _request_of(self, job_id: str) -> EvalRequest:
        stored = await self.store.get(job_id)
        if stored is None:
            raise LookupError(f"job {job_id} is not in the store")
        # a stored request no longer valid (older server) fails its job, nothing else
        return EvalRequest.model_validate(stored.request)

    def _remember(self, job: JobRecord) -> None:
        self._recent[job.id] = job.summary()
        while len(self._recent) > _RECENT_JOBS:
            self._recent.popitem(last=False)

    def _wake(self, job_id: str) -> None:
        event = self._events.pop(job_id, None)
        if event is not None:
            event.set()


__all__ = [
    "DEFAULT_KEEP_DAYS",
    "DEFAULT_MAX_ATTEMPTS",
    "EvalMetrics",
    "EvaluatorLike",
    "IdempotencyConflict",
    "JobManager",
    "PeerCounter",
    "QueueFull",
    "SubmitError",
    "TestModeEvaluator",
    "body_hash",
    "run_check",
    "submit_status_for",
]
