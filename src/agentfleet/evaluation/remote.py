"""Remote evaluation workers, server side: the lease protocol over HTTP.

A remote worker (``agentfleet eval-worker``, or a Ray actor: :mod:`~agentfleet.evaluation.
worker`) takes jobs from the server's one queue, with the server's token:

- ``POST /workers/lease`` ``{"worker", "node", "cpus", "wait", "lease_id"}`` -> 200
  ``{"lease_id", "job_id", "attempt", "ttl_s", "heartbeat_s", "request", "evaluator"}``
  (the whole request, patch included; ``evaluator``: what to evaluate with, the server's
  settings), or 204 when no job came within ``wait`` seconds (0..60). ``lease_id``
  (optional): the id the lease gets, so a worker stopped while asking can release it
  unread; an id already live or released is never granted (204). A job is not granted to
  an ask whose client has disconnected (or taken back at once if it went while granted);
- ``POST /workers/leases/{lease_id}/heartbeat`` -> 200 ``{"ttl_s"}``, or 410 when the lease
  expired (its job is queued again: stop evaluating it);
- ``POST /workers/leases/{lease_id}/release`` -> 200 ``{"released": true, "job_id"}``: a
  stopping worker hands its job back, queued again at once; that start is not counted in
  ``attempts`` (a worker's stop is not the job's fault, so it never reaches
  ``max_attempts``); 410 when the lease is unknown or expired (an id not granted yet is
  retired: never granted from then on);
- ``POST /workers/leases/{lease_id}/result`` ``{"status": "done" | "failed", "reward",
  "speedup", "info", "error", "elapsed_s"}`` -> 200 ``{"stored": true}``, or 409 when the
  lease expired or was replaced: the result is refused, never stored twice. The stored
  ``info`` gets ``"worker": {"name", "node", "cpus"}``: the lease's worker.

A lease not renewed within ``ttl_s`` expires (checked every ``min(1, ttl_s / 4)`` s): the
job is queued again (or failed after ``max_attempts`` starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path as PathParam, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from agentfleet.evaluation.jobs import JobManager
from agentfleet.evaluation.leases import Lease, LeaseLost
from agentfleet.evaluation.outcome import coerce_result
from agentfleet.evaluation.schema import MAX_LEASE_WAIT_S
from agentfleet.evaluation.store import DONE, FAILED
from agentfleet.http.openapi import JSON_OBJECT, errors

# a lease id, the server's (uuid4 hex) or a worker's own: anything else is a 422
LEASE_ID = r"^[A-Za-z0-9_-]{16,64}$"
LeaseId = Annotated[str, PathParam(pattern=LEASE_ID)]

logger = logging.getLogger("agentfleet.evaluation")


class LeaseAsk(BaseModel):
    """A worker asking for a job."""

    model_config = ConfigDict(extra="forbid")

    worker: str = Field(min_length=1, max_length=200)
    node: str | None = Field(default=None, max_length=200)
    cpus: str | None = Field(default=None, max_length=200)
    wait: float = Field(default=20.0, ge=0.0, le=MAX_LEASE_WAIT_S)
    lease_id: str | None = Field(default=None, pattern=LEASE_ID)


class LeaseResult(BaseModel):
    """A worker's outcome of its leased job."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["done", "failed"]
    reward: float = Field(allow_inf_nan=False)
    speedup: float = Field(allow_inf_nan=False)
    info: dict[str, Any] = Field(default_factory=dict)  # made strict JSON when stored
    error: str | None = Field(default=None, max_length=20_000)
    elapsed_s: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)


async def until_disconnected(request: Request) -> None:
    """Returns once the client has disconnected (the request body is already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class RemoteWorkers:
    """The lease protocol over a :class:`JobManager`, and the task that expires leases."""

    def __init__(self, jobs: JobManager) -> None:
        self.jobs = jobs
        self._reaper: asyncio.Task[None] | None = None
        self._labelled: set[tuple[str, str]] = set()  # remote workers' gauge labels

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap(), name="eval-lease-reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None

    async def _reap(self) -> None:
        period = min(1.0, self.jobs.leases.ttl_s / 4)
        while True:
            await asyncio.sleep(period)
            try:
                await self.expire()
            except Exception:  # a busy store: try again next time
                logger.exception("expiring leases failed")

    async def expire(self) -> int:
        """Release the jobs of expired leases (their late results are refused from now
        on) and queue them again; the number released."""
        jobs = self.jobs
        n = 0
        for lease in jobs.leases.take_expired():
            jobs.metrics.leases_expired.inc()
            if not await self._requeue(lease, counted=True):
                continue  # it finished, or was re-leased, meanwhile
            n += 1
            logger.warning(
                "job %s: lease of worker %s (node %s) expired: no heartbeat for %gs",
                lease.job_id, lease.worker, lease.node, jobs.leases.ttl_s,
            )  # fmt: skip
        self._gauge()
        return n

    async def release(self, lease_id: str) -> str:
        """A worker hands its live lease back (it is stopping): the job is queued again
        at once, that start not counted; the job id. :class:`LeaseLost` if the lease is
        unknown or expired (its job was queued again already, or finished)."""
        jobs = self.jobs
        lease = jobs.leases.hand_back(lease_id)
        jobs.metrics.leases_released.inc()
        try:
            if not await asyncio.shield(self._requeue(lease, counted=False)):
                raise LeaseLost(f"lease {lease_id!r} no longer holds its job")
        finally:
            self._gauge()
        logger.info(
            "job %s: worker %s (node %s) handed its lease back: queued again",
            lease.job_id, lease.worker, lease.node,
        )  # fmt: skip
        return lease.job_id

    async def _take_back(self, lease: Lease) -> None:
        """A lease whose asker went away while it was granted: its job queued again at
        once, that start not counted (unless a release did it already)."""
        jobs = self.jobs
        jobs.leases.end(lease.id)
        if await asyncio.shield(self._requeue(lease, counted=False)):
            jobs.metrics.leases_released.inc()
            logger.info(
                "job %s: worker %s went away before its lease reached it: queued again",
                lease.job_id, lease.worker,
            )  # fmt: skip
        self._gauge()

    async def _requeue(self, lease: Lease, *, counted: bool) -> bool:
        """Release the job ``lease`` held and queue it again; False if it no longer held
        it. ``counted=False``: that start is taken off ``attempts``."""
        jobs = self.jobs
        if not await jobs.store.release(lease.job_id, lease.id, counted=counted):
            return False
        job = await jobs.store.get(lease.job_id)
        if job is None:  # pragma: no cover - unfinished jobs are never pruned
            return False
        await jobs.requeue(job)
        return True

    def _gauge(self) -> None:
        """The remote workers' gauges: how many, and each one busy (1) or idle (0) with
        its CPU set (``agentfleet_eval_worker_busy``, as the local workers). A worker no
        longer listed loses its series: names that come and go never pile up."""
        m = self.jobs.metrics
        view = self.jobs.leases.remote_view()
        m.remote_workers.set(len(view))
        labelled = set()
        for w in view:
            labels = (str(w["worker"]), str(w["cpus"] or "any"))
            labelled.add(labels)
            m.worker_busy.labels(*labels).set(1 if w["job_id"] else 0)
        for labels in self._labelled - labelled:
            with contextlib.suppress(KeyError):
                m.worker_busy.remove(*labels)
        self._labelled = labelled

    async def lease(self, ask: LeaseAsk, gone: asyncio.Future[Any]) -> dict[str, Any] | None:
        """The next job under a new lease, waiting up to ``ask.wait`` s (or until ``gone``,
        the client's disconnect, is done, or the server closes); None if none came."""
        jobs = self.jobs
        jobs.leases.note(ask.worker, ask.node, ask.cpus)
        self._gauge()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ask.wait
        closing = asyncio.ensure_future(jobs.closing())  # the server is closing: no job
        try:
            return await self._lease(ask, gone, closing, deadline)
        finally:
            closing.cancel()

    async def _lease(
        self, ask: LeaseAsk, gone: asyncio.Future[Any], closing: asyncio.Future[Any],
        deadline: float,
    ) -> dict[str, Any] | None:  # fmt: skip
        jobs = self.jobs
        loop = asyncio.get_running_loop()
        while not gone.done() and not jobs.draining:  # (closing is done once draining)
            taker: asyncio.Future[Any] = asyncio.ensure_future(
                jobs.take(max(0.0, deadline - loop.time()))
            )
            await asyncio.wait([taker, gone, closing], return_when=asyncio.FIRST_COMPLETED)
            if not taker.done():
                taker.cancel()  # a cancelled take loses no job
                with contextlib.suppress(asyncio.CancelledError):
                    await taker
                return None
            job_id: str | None = taker.result()
            if job_id is None:
                return None
            if gone.done() or jobs.draining or not jobs.leases.usable(ask.lease_id):
                jobs.untake(job_id)  # the asker went away (or released this id already)
                return None  # or the server closes: no job goes out then
            lease = jobs.leases.grant(
                job_id, ask.worker, node=ask.node, cpus=ask.cpus, remote=True,
                lease_id=ask.lease_id,
            )  # fmt: skip
            if not await jobs.begin(job_id, lease):
                continue  # a duplicate queue entry of a finished job
            job = await jobs.store.get(job_id)
            if job is None:  # pragma: no cover - unfinished jobs are never pruned
                jobs.leases.end(lease.id)
                continue
            if gone.done() or jobs.draining or not jobs.leases.live(lease.id):
                await self._take_back(lease)  # gone, released or closing meanwhile
                return None
            self._gauge()
            logger.info("job %s leased to worker %s (node %s)", job_id, ask.worker, ask.node)
            ttl = jobs.leases.ttl_s
            return {
                "lease_id": lease.id,
                "job_id": job_id,
                "attempt": job.attempts,
                "ttl_s": ttl,
                "heartbeat_s": ttl / 3,
                "request": job.request,
                "evaluator": jobs.worker_spec,
            }
        return None

    def heartbeat(self, lease_id: str) -> dict[str, Any]:
        """Renew a lease; raises :class:`LeaseLost` once it expired."""
        self.jobs.leases.renew(lease_id)
        return {"ttl_s": self.jobs.leases.ttl_s}

    async def report(self, lease_id: str, res: LeaseResult) -> None:
        """Store a leased job's outcome; raises :class:`LeaseLost` (refused, not stored)
        when the lease expired or was replaced."""
        jobs = self.jobs
        lease = jobs.leases.end(lease_id) if jobs.leases.live(lease_id) else None
        if lease is None:
            jobs.metrics.results_refused.inc()
            raise LeaseLost(f"lease {lease_id!r} expired: its job was queued again")
        who = {"name": lease.worker, "node": lease.node, "cpus": lease.cpus}
        result = coerce_result(res.model_dump(include={"reward", "speedup", "info"}))
        result["info"]["worker"] = who
        status = DONE if res.status == "done" else FAILED
        landed = await asyncio.shield(jobs.finish(lease, status, result, res.error, res.elapsed_s))
        self._gauge()
        if not landed:
            jobs.metrics.results_refused.inc()
            raise LeaseLost(f"lease {lease_id!r} no longer holds its job: result refused")


def worker_routes(remote: Callable[[], RemoteWorkers]) -> APIRouter:
    """The routes above; ``remote()`` is the running server's :class:`RemoteWorkers`."""
    router = APIRouter(prefix="/workers")

    @router.post(
        "/lease",
        response_model=None,
        responses={
            200: {"description": "a job under a new lease", "content": JSON_OBJECT},
            204: {"description": "no job came within wait seconds"},
            **errors(400, 413, 422),
        },
    )
    async def lease(request: Request, ask: LeaseAsk) -> Response:
        gone = asyncio.ensure_future(until_disconnected(request))
        try:
            got = await remote().lease(ask, gone)
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone
        if got is None:
            return Response(status_code=204)
        return JSONResponse(got)

    @router.post("/leases/{lease_id}/heartbeat", responses=errors(410, 422))
    async def heartbeat(lease_id: LeaseId) -> JSONResponse:
        try:
            return JSONResponse(remote().heartbeat(lease_id))
        except LeaseLost as exc:
            return JSONResponse({"error": str(exc)}, 410)

    @router.post(
        "/leases/{lease_id}/release",
        summary="Hand a lease back",
        responses={
            200: {
                "description": '`{"released": true, "job_id"}`: the job is queued again',
                "content": JSON_OBJECT,
            },
            410: {
                **errors(410)[410],
                "description": "the lease is unknown or expired (its job was requeued)",
            },
            **errors(422),
        },
    )
    async def release(lease_id: LeaseId) -> JSONResponse:
        """A stopping worker gives its job back: queued again at once, that start not
        counted in ``attempts``; a later result under this lease is refused (409)."""
        try:
            job_id = await remote().release(lease_id)
        except LeaseLost as exc:
            return JSONResponse({"error": str(exc)}, 410)
        return JSONResponse({"released": True, "job_id": job_id})

    @router.post("/leases/{lease_id}/result", responses=errors(400, 409, 413, 422))
    async def result(lease_id: LeaseId, res: LeaseResult) -> JSONResponse:
        try:
            await remote().report(lease_id, res)
        except LeaseLost as exc:
            return JSONResponse({"error": str(exc)}, 409)
        return JSONResponse({"stored": True})

    return router


__all__ = [
    "MAX_LEASE_WAIT_S",
    "LeaseAsk",
    "LeaseResult",
    "RemoteWorkers",
    "until_disconnected",
    "worker_routes",
]
