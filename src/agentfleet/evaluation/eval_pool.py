"""The sandboxes one evaluation creates (:class:`SandboxPool`), deleted together; their
label (:data:`job_label`), by which a restarted server deletes those a killed one left
(:func:`delete_left`)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Collection

from agentfleet.sandbox.base import CreateSandbox, Sandboxes, SandboxNotFound, new_sandbox_id
from agentfleet.sandbox.client import SandboxClient

__all__ = ["SandboxPool", "delete_left", "job_label", "label_of"]

log = logging.getLogger("agentfleet.evaluation")

# The ``run`` label of an evaluation's sandboxes: ``evaluation:<job id>`` while a job
# server's worker runs the job (set by the job manager), else ``evaluation``.
job_label: contextvars.ContextVar[str] = contextvars.ContextVar(
    "agentfleet_eval_job_label", default="evaluation"
)


def label_of(job_id: str) -> str:
    return f"evaluation:{job_id}"


async def delete_left(sandboxes: object, labels: Collection[str]) -> list[str]:
    """Delete the sandboxes labelled with one of ``labels`` on the sandbox server behind
    ``sandboxes`` (a :class:`SandboxClient`, maybe pinned): those the evaluations of a
    killed server left. In-process sandboxes died with it (the next start's reaper removes
    their folders). Never raises: what stays is reaped at its ttl."""
    client = getattr(sandboxes, "inner", sandboxes)
    if not labels or not isinstance(client, SandboxClient):
        return []
    try:
        left = await client.delete_runs(labels)
    except Exception as exc:
        log.warning("could not delete the sandboxes a killed server left: %s", exc)
        return []
    if left:
        log.warning("deleted %d sandboxes of interrupted evaluations", len(left))
    return left


class SandboxPool:
    """The sandboxes one evaluation creates; :meth:`close` deletes every one of them,
    including those whose creation was still under way."""

    def __init__(self, sandboxes: Sandboxes) -> None:
        self._sandboxes = sandboxes
        self._tasks: list[asyncio.Task[str]] = []
        self._ids: list[str] = []

    def start(self, req: CreateSandbox) -> asyncio.Task[str]:
        # A chosen id: the create is retry-safe, and deleted even if its answer was lost.
        req = req.model_copy(update={"sandbox_id": new_sandbox_id()})
        self._ids.append(str(req.sandbox_id))

        async def create() -> str:
            info = await self._sandboxes.create(req)
            return info.sandbox_id

        task = asyncio.ensure_future(create())
        self._tasks.append(task)
        return task

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks)
        # the id made, or for a creation that failed the chosen one: it may exist all the
        # same (its answer was lost)
        ids = [
            t.result() if not t.cancelled() and t.exception() is None else chosen
            for t, chosen in zip(self._tasks, self._ids, strict=True)
        ]
        results = await asyncio.gather(
            *(self._sandboxes.delete(i) for i in ids), return_exceptions=True
        )
        for sid, res in zip(ids, results, strict=True):
            if isinstance(res, BaseException) and not isinstance(res, SandboxNotFound):
                log.warning("could not delete sandbox %s: %r", sid, res)
