"""The sandboxes one evaluation creates (:class:`SandboxPool`), deleted together."""

from __future__ import annotations

import asyncio
import logging

from agentfleet.sandbox.base import CreateSandbox, Sandboxes, SandboxNotFound, new_sandbox_id

__all__ = ["SandboxPool"]

log = logging.getLogger("agentfleet.evaluation")


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
