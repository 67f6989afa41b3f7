"""A remote evaluation worker: the evaluator running in another process (any machine, or a
Ray actor), taking jobs from an evaluation server by lease (:mod:`~agentfleet.evaluation.
remote`).

:class:`EvalWorker` loops: lease the next job (long poll), evaluate it with its own
sandboxes, on its own CPU set (:data:`~agentfleet.evaluation.pinning.worker_cpus`),
heartbeat meanwhile, post the result. A heartbeat answered 410 (the lease expired, the job
went back to the queue) cancels the evaluation; a result answered 409 was refused (the
job is someone else's now) and is dropped. Cancelled (SIGINT / SIGTERM, ``ray.cancel``)
mid-evaluation, it lets the evaluation unwind and hands its lease back, so the job is
queued again at once rather than after the lease's TTL; cancelled while it asks for a
job, it hands back the lease it named in its ask (granted or not); cancelled while it
posts a result, it finishes that post first (up to ``RESULT_S``), else hands the lease
back. :class:`WorkerEvaluators` builds
the evaluator a lease asks for (the server's settings) over one set of sandboxes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from agentfleet.evaluation.outcome import coerce_result, error_text, failed_result
from agentfleet.evaluation.pinning import CpuSet, format_cpus, worker_cpus
from agentfleet.evaluation.schema import EvalRequest
from agentfleet.evaluation.submission import EvaluatorLike, TestModeEvaluator
from agentfleet.http import HttpPool
from agentfleet.http.auth import bearer_headers, client_token
from agentfleet.http.errors import HttpError
from agentfleet.http.limits import Timeouts

log = logging.getLogger("agentfleet.evaluation.worker")

DEFAULT_LEASE_WAIT_S = 20.0
_Outcome = tuple[str, dict[str, Any], str | None, float]  # status, result, error, elapsed
RETRY_S = (0.5, 1.0, 2.0, 5.0)  # back-off while the server cannot be reached
UNWIND_S = 30.0  # a stopping worker waits this long for its evaluation to unwind
RELEASE_S = 5.0  # ...and this long for the server to take its lease back
RESULT_S = 5.0  # a worker stopped while it posts a result waits this long for the answer


async def _cancelled(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait for it to end (a cancel of the caller still propagates)."""
    task.cancel()
    await asyncio.wait([task])


class WorkerEvaluators:
    """Evaluators for the specs leases carry (``{"config": EvalConfig fields}`` or
    ``{"test_latency": s}``), one per distinct spec, over one set of sandboxes: the
    sandbox server at ``sandbox_url``, else an in-process sandbox service (process backend,
    ``confine``), opened at the first real evaluation and closed by :meth:`aclose`.
    ``test_latency`` (tests, benches) overrides every spec with test mode."""

    def __init__(
        self,
        *,
        sandbox_url: str | None = None,
        sandbox_token: str | None = None,
        dataset_roots: Sequence[str | Path] = (),
        confine: str = "auto",
        test_latency: float | None = None,
    ) -> None:
        self.sandbox_url = sandbox_url
        self.sandbox_token = sandbox_token
        self.dataset_roots = tuple(dataset_roots)
        self.confine = confine
        self.test_latency = test_latency
        self._stack = AsyncExitStack()
        self._sandboxes: Any = None
        self._made: dict[str, EvaluatorLike] = {}

    async def get(self, spec: dict[str, Any]) -> EvaluatorLike:
        latency = self.test_latency if self.test_latency is not None else spec.get("test_latency")
        if latency is not None:
            return TestModeEvaluator(float(latency))
        key = json.dumps(spec.get("config") or {}, sort_keys=True)
        ev = self._made.get(key)
        if ev is None:
            from agentfleet.evaluation.config import EvalConfig
            from agentfleet.evaluation.evaluator import Evaluator

            config = EvalConfig.model_validate(spec.get("config") or {})
            ev = Evaluator(await self._open(), config, dataset_roots=self.dataset_roots)
            self._made[key] = ev
        return ev

    async def _open(self) -> Any:
        if self._sandboxes is None:
            from agentfleet.evaluation.sandboxes import open_sandboxes

            self._sandboxes = await self._stack.enter_async_context(
                open_sandboxes(
                    self.sandbox_url, self.sandbox_token, self.dataset_roots, self.confine
                )
            )
        return self._sandboxes

    async def aclose(self) -> None:
        self._made.clear()
        self._sandboxes = None
        await self._stack.aclose()


def default_name(cpus: CpuSet | None = None) -> str:
    """``host:pid`` (and ``/cpus``): unique per process on a node."""
    base = f"{socket.gethostname()}:{os.getpid()}"
    return f"{base}/{format_cpus(cpus)}" if cpus else base


class EvalWorker:
    """Leases jobs from the evaluation server at ``server_url`` and evaluates them.

    ``token``: the server's bearer token (default ``$AGENTFLEET_EVAL_TOKEN``). ``cpus``:
    the CPU set this worker's commands are pinned to (None: not pinned). ``pool``: an
    :class:`HttpPool` (not closed here; default: the loop's shared pool).
    """

    def __init__(
        self,
        server_url: str,
        evaluators: WorkerEvaluators,
        *,
        token: str | None = None,
        name: str | None = None,
        node: str | None = None,
        cpus: CpuSet | None = None,
        pool: HttpPool | None = None,
        wait_s: float = DEFAULT_LEASE_WAIT_S,
    ) -> None:
        self.url = server_url.rstrip("/")
        self.evaluators = evaluators
        self.headers = bearer_headers(client_token(token, "AGENTFLEET_EVAL_TOKEN"))
        self.cpus = tuple(cpus) if cpus else None
        self.name = name or default_name(self.cpus)
        self.node = node or socket.gethostname()
        self.pool = pool
        self.wait_s = wait_s
        self.done = 0  # results stored
        self.refused = 0  # results the server refused (lease expired)
        self.released = 0  # leases handed back on a stop
        self.current: str | None = None  # the job being evaluated

    def _pool(self) -> HttpPool:
        return self.pool or HttpPool.for_loop()

    async def _post(self, path: str, body: dict[str, Any], read_s: float = 60.0) -> Any:
        return await self._pool().request(
            "POST",
            self.url + path,
            json=body,
            headers=self.headers,
            timeout=Timeouts(total=None, connect=30, sock_read=read_s),
            idempotent=False,
        )

    async def run(self, max_jobs: int | None = None) -> int:
        """Lease and evaluate jobs until cancelled (or ``max_jobs`` were run); server
        outages are waited out with back-off. Returns the jobs run."""
        ran, failures = 0, 0
        while max_jobs is None or ran < max_jobs:
            try:
                got = await self.run_one()
            except (HttpError, OSError) as exc:
                delay = RETRY_S[min(failures, len(RETRY_S) - 1)]
                failures += 1
                log.warning(
                    "worker %s: server unreachable (%s); retry in %gs", self.name, exc, delay
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            ran += int(got)
        return ran

    async def run_one(self) -> bool:
        """Lease one job (waiting up to ``wait_s``) and evaluate it; False if none came.
        Raises :class:`~agentfleet.http.HttpError` when the server answers an error."""
        lease_id = uuid.uuid4().hex  # named here: a stop mid-ask can hand it back unread
        ask = {
            "worker": self.name,
            "node": self.node,
            "cpus": format_cpus(self.cpus) if self.cpus else None,
            "wait": self.wait_s,
            "lease_id": lease_id,
        }
        try:
            resp = await self._post("/workers/lease", ask, read_s=self.wait_s + 30)
        except asyncio.CancelledError:  # the server may have granted it meanwhile
            await self._release(lease_id, None)
            raise
        if resp.status == 204:
            return False
        resp.raise_for_status()
        lease = resp.json()
        await self._evaluate(lease)
        return True

    async def _evaluate(self, lease: dict[str, Any]) -> None:
        lease_id, job_id = lease["lease_id"], lease["job_id"]
        self.current = job_id
        lost = asyncio.Event()
        work = asyncio.ensure_future(self._outcome(lease))
        beat = asyncio.ensure_future(self._heartbeat(lease_id, lease["heartbeat_s"], lost, work))
        try:
            status, result, error, elapsed = await work
        except asyncio.CancelledError:
            self.current = None
            await _cancelled(beat)
            if not lost.is_set():  # we are stopping: unwind, then hand the job back
                work.cancel()
                await asyncio.wait([work], timeout=UNWIND_S)  # its sandboxes deleted
                await self._release(lease_id, job_id)
                raise
            log.warning("worker %s: job %s lost its lease; dropped", self.name, job_id)
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # a stop came at the same time
                raise
            return
        self.current = None
        body = {**result, "status": status, "error": error, "elapsed_s": elapsed}
        post = asyncio.ensure_future(self._report(lease_id, body, beat))
        try:
            resp = await asyncio.shield(post)
        except asyncio.CancelledError:  # stopping with a result in hand: post it first
            await self._report_on_stop(post, lease_id, job_id)
            raise
        self._counted(resp, job_id)

    async def _report(self, lease_id: str, body: dict[str, Any], beat: asyncio.Task[Any]) -> Any:
        await _cancelled(beat)
        return await self._post(f"/workers/leases/{lease_id}/result", body)

    async def _report_on_stop(self, post: asyncio.Future[Any], lease_id: str, job_id: str) -> None:
        """Stopped while posting a result: wait up to ``RESULT_S`` for its answer; a post
        that fails (or does not end in time) hands the lease back instead."""
        log.info("worker %s: stopping; posting the result of job %s first", self.name, job_id)
        try:
            await asyncio.wait([post], timeout=RESULT_S)
        finally:
            if not post.done():
                post.cancel()
                await asyncio.wait([post])
        if not post.cancelled() and post.exception() is None and post.result().status in (200, 409):
            self._counted(post.result(), job_id)
            return
        await self._release(lease_id, job_id)

    def _counted(self, resp: Any, job_id: str) -> None:
        """Count the server's answer to a result: stored (200), refused (409)."""
        if resp.status == 409:
            self.refused += 1
            log.warning("worker %s: result of job %s refused (lease expired)", self.name, job_id)
            return
        resp.raise_for_status()
        self.done += 1

    async def _release(self, lease_id: str, job_id: str | None) -> None:
        """Hand the lease back so the job is queued again at once (not after the lease's
        TTL); a server that does not answer within ``RELEASE_S`` lets it lapse instead.
        ``job_id`` None: the lease asked for (the server may not have granted it)."""
        what = f"job {job_id}" if job_id else f"lease {lease_id} asked for"
        try:
            async with asyncio.timeout(RELEASE_S):
                resp = await self._post(f"/workers/leases/{lease_id}/release", {})
        except (HttpError, OSError, TimeoutError) as exc:
            log.warning("worker %s: %s not handed back (%s)", self.name, what, exc)
            return
        if resp.status == 200:
            self.released += 1
            log.info("worker %s: stopping; %s handed back", self.name, what)
        elif job_id is None and resp.status == 410:  # never granted: nothing to hand back
            log.debug("worker %s: stopping; %s was not granted", self.name, what)
        else:
            log.warning("worker %s: handing back %s: HTTP %d", self.name, what, resp.status)

    async def _outcome(
        self, lease: dict[str, Any]
    ) -> tuple[str, dict[str, Any], str | None, float]:
        t0 = time.monotonic()
        worker_cpus.set(self.cpus)  # this task's commands run on the worker's CPUs
        try:
            evaluator = await self.evaluators.get(lease.get("evaluator") or {})
            req = EvalRequest.model_validate(lease["request"])
            log.info("worker %s: job %s started: %s", self.name, lease["job_id"], req.instance_id)
            status, result, error = "done", coerce_result(await evaluator.evaluate(req)), None
        except Exception as exc:
            status, result, error = "failed", failed_result(exc), error_text(exc)
        return status, result, error, time.monotonic() - t0

    async def _heartbeat(
        self, lease_id: str, period: float, lost: asyncio.Event, work: asyncio.Future[Any]
    ) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                resp = await self._post(f"/workers/leases/{lease_id}/heartbeat", {}, read_s=period)
            except HttpError as exc:  # a missed beat: the next may land before the expiry
                log.warning("worker %s: heartbeat failed: %s", self.name, exc)
                continue
            if resp.status == 410:
                lost.set()
                work.cancel()
                return


async def serve_worker(
    server_url: str,
    evaluators: WorkerEvaluators,
    *,
    max_jobs: int | None = None,
    **kw: Any,
) -> int:
    """Run an :class:`EvalWorker` (``kw``: its options) with its own pool until cancelled
    or ``max_jobs`` ran; closes its evaluators' sandboxes. Returns the jobs run."""
    async with HttpPool() as pool:
        try:
            return await EvalWorker(server_url, evaluators, pool=pool, **kw).run(max_jobs)
        finally:
            await evaluators.aclose()


__all__ = [
    "DEFAULT_LEASE_WAIT_S",
    "EvalWorker",
    "WorkerEvaluators",
    "default_name",
    "serve_worker",
]
