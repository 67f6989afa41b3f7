"""The actor side of the Ray backend: :class:`FleetShard`, one shard of a fleet, run by Ray as
an async actor on its own event loop (its own HTTP pool, its own embedded servers unless
sandbox URLs are given). It runs each task with the local backend's
:func:`~agentfleet.fleet.agent_run.run_one` and hands ``(outcome, trajectory)`` back to the
driver (:mod:`agentfleet.fleet.ray_backend`), the only writer of the run folder.

Imports no Ray: Ray loads this class in its workers from the driver's ``ray.remote``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from contextlib import AsyncExitStack
from typing import Any

from agentfleet.fleet.agent_run import run_one
from agentfleet.fleet.config import FleetConfig, configure_pool, select_tasks
from agentfleet.fleet.outcome import TaskOutcome
from agentfleet.fleet.servers import embedded_servers
from agentfleet.fleet.writer import ResultsWriter
from agentfleet.http.pool import HttpPool
from agentfleet.sandbox.base import CreateSandbox, SandboxInfo
from agentfleet.sandbox.client import SandboxClient
from agentfleet.sandbox.folders import default_root, rmtree
from agentfleet.tasks import Task

log = logging.getLogger("agentfleet.fleet.ray")

__all__ = ["FleetShard"]


class _CapturingWriter(ResultsWriter):
    """run_one's writer inside an actor: keeps the result for the driver, writes nothing."""

    def __init__(self, cfg: FleetConfig) -> None:
        super().__init__(cfg.run_dir)
        self.captured: tuple[TaskOutcome, dict[str, Any]] | None = None

    async def write(self, outcome: TaskOutcome, trajectory: dict[str, Any]) -> None:
        self.captured = (outcome, trajectory)


class _TrackedSandboxes(SandboxClient):
    """A SandboxClient that remembers the sandboxes it created and has not deleted yet."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        super().__init__(base_url, token=token)
        self.live: set[str] = set()

    async def create(self, req: CreateSandbox) -> SandboxInfo:
        info = await super().create(req)
        self.live.add(info.sandbox_id)
        return info

    async def delete(self, sandbox_id: str) -> None:
        await super().delete(sandbox_id)
        self.live.discard(sandbox_id)


class FleetShard:
    """One shard of the fleet; used as a Ray async actor (``ray.remote(FleetShard)``).

    ``cfg.sandbox_url`` / ``cfg.eval_url``: servers to use; where ``None`` the shard starts
    its own embedded one on 127.0.0.1 of its node at first use.
    """

    def __init__(self, cfg: FleetConfig, index: int) -> None:
        self.cfg = cfg
        self.index = index
        self._stack: AsyncExitStack | None = None
        self._start_lock: asyncio.Lock | None = None
        self._tasks: dict[str, Task] = {}
        self._sandboxes: _TrackedSandboxes | None = None
        self._eval_url = ""
        self._info: dict[str, Any] = {}
        self._running: set[asyncio.Task[Any]] = set()
        self._closed = False

    async def start(self) -> dict[str, Any]:
        """Start the embedded servers (once); return where this shard runs."""
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._closed:
                raise RuntimeError(f"shard {self.index} is shut down")
            if self._stack is None:
                # This actor's own pool (created on its loop at first use): the run's limits
                # (--pool), else sized for its share (cfg.workers is the shard's capacity).
                limits = configure_pool(self.cfg)
                stack = AsyncExitStack()
                try:
                    self._tasks = {t.id: t for t in await asyncio.to_thread(select_tasks, self.cfg)}
                    sandbox_url, eval_url, token = await stack.enter_async_context(
                        embedded_servers(self.cfg)
                    )
                except BaseException:
                    await stack.aclose()
                    raise
                self._stack = stack
                self._sandboxes = _TrackedSandboxes(sandbox_url, token=token)
                self._eval_url = eval_url
                self._info = {
                    "index": self.index,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "sandbox_url": sandbox_url,
                    "eval_url": eval_url,
                    "loop": type(asyncio.get_running_loop()).__module__,
                    "pool": f"{limits.limit}/{limits.limit_per_host}",
                }
        return self._info

    async def run_task(self, task_id: str) -> tuple[TaskOutcome, dict[str, Any]]:
        """Run one task like the local backend; return its outcome and trajectory."""
        current = asyncio.current_task()
        assert current is not None
        self._running.add(current)
        try:
            await self.start()
            assert self._sandboxes is not None
            task = self._tasks[task_id]
            writer = _CapturingWriter(self.cfg)
            await run_one(task, self.cfg, self._sandboxes, self._eval_url, writer)
            assert writer.captured is not None
            return writer.captured
        finally:
            self._running.discard(current)

    async def running(self) -> int:
        return len(self._running)

    async def shutdown(self) -> None:
        """Cancel running agents (their sandboxes get deleted), stop the servers, close the pool."""
        self._closed = True
        running = list(self._running)
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.aclose()  # the sandbox server deletes whatever is left
                await self._sweep()
        finally:
            # The actor's loop is not asyncio.run's: close its pool by hand.
            await HttpPool.for_loop().aclose()

    async def _sweep(self) -> None:
        """Remove folders of our embedded server's sandboxes whose deletion failed."""
        if self.cfg.sandbox_url is not None or self._sandboxes is None:
            return  # not our server: its owner cleans up
        root = self.cfg.sandbox_root or default_root()
        candidates = [root / sid for sid in sorted(self._sandboxes.live)]
        left = await asyncio.to_thread(lambda: [p for p in candidates if p.exists()])
        if left:
            log.warning("removing %d sandbox folders left behind: %s", len(left), left)
            for path in left:
                await asyncio.to_thread(rmtree, path)
