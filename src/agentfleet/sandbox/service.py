"""SandboxService: the ``Sandboxes`` protocol on top of a Backend, with tasks, limits, reaping."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from agentfleet.sandbox.base import (
    DEFAULT_EXEC_TIMEOUT,
    DEFAULT_OUTPUT_LIMIT,
    Backend,
    CreateSandbox,
    ExecRequest,
    ExecResult,
    SandboxError,
    SandboxInfo,
    SandboxNotFound,
)
from agentfleet.tasks.task import TaskNotFound, load_dataset

log = logging.getLogger(__name__)


def new_sandbox_id() -> str:
    return f"sb-{secrets.token_hex(6)}"


@dataclass
class ServiceStats:
    created_total: int = 0
    deleted_total: int = 0
    reaped_total: int = 0
    create_failures: int = 0
    rejected_total: int = 0  # over max_sandboxes
    execs_total: int = 0
    exec_timeouts: int = 0
    exec_truncations: int = 0
    exec_seconds_total: float = 0.0


class SandboxService:
    """Sandboxes for tasks, served in-process (the HTTP server wraps one of these).

    Args:
        backend: where the sandboxes live (``ProcessBackend``, later a docker one).
        output_limit: characters of output kept per exec (head + tail).
        max_sandboxes: sandboxes alive at once; creating one more answers 429.
        max_creating: sandboxes being created at once (copy + git); others wait their turn.
        reap_period_s: how often expired sandboxes (``ttl_s`` elapsed) are deleted.
        default_timeout: exec timeout when a request names none.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
        max_sandboxes: int = 512,
        max_creating: int = 16,
        reap_period_s: float = 30.0,
        default_timeout: float = DEFAULT_EXEC_TIMEOUT,
    ) -> None:
        self.backend = backend
        self.output_limit = output_limit
        self.max_sandboxes = max_sandboxes
        self.max_creating = max_creating
        self.reap_period_s = reap_period_s
        self.default_timeout = default_timeout
        self.stats = ServiceStats()
        self._infos: dict[str, SandboxInfo] = {}
        self._reserved = 0
        self._create_sem: asyncio.Semaphore | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self.execs_running = 0

    @property
    def backend_name(self) -> str:
        return self.backend.name

    # lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.backend.start()
        if self.reap_period_s > 0:
            self._reaper = asyncio.create_task(self._reap_loop(), name="sandbox-reaper")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        self._infos.clear()
        await self.backend.aclose()

    async def __aenter__(self) -> SandboxService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reap_period_s)
            try:
                await self.reap_expired()
            except Exception:  # keep reaping whatever happens
                log.exception("sandbox reaper failed")

    async def reap_expired(self, now: float | None = None) -> list[str]:
        """Delete the sandboxes whose ``expires_at`` has passed; return their ids."""
        now = time.time() if now is None else now
        expired = [sid for sid, info in self._infos.items() if info.expires_at <= now]
        for sid in expired:
            with contextlib.suppress(SandboxNotFound):
                await self.delete(sid)
                self.stats.reaped_total += 1
        if expired:
            log.info("reaped %d expired sandboxes", len(expired))
        return expired

    # Sandboxes protocol ----------------------------------------------------------------
    async def create(self, req: CreateSandbox) -> SandboxInfo:
        if self._closed:
            raise SandboxError("sandbox service is shut down", 503)
        if not self._started:
            await self.start()
        if len(self._infos) + self._reserved >= self.max_sandboxes:
            self.stats.rejected_total += 1
            raise SandboxError(
                f"too many sandboxes: {self.max_sandboxes} alive at most; delete some first", 429
            )
        self._reserved += 1
        try:
            source = await self._source_dir(req)
            if self._create_sem is None:
                self._create_sem = asyncio.Semaphore(self.max_creating)
            sandbox_id = new_sandbox_id()
            async with self._create_sem:
                try:
                    workdir = await self.backend.create(sandbox_id, source, req)
                except BaseException:
                    self.stats.create_failures += 1
                    raise
            now = time.time()
            info = SandboxInfo(
                sandbox_id=sandbox_id,
                backend=self.backend.name,
                workdir=workdir,
                task_id=req.task_id,
                dataset=req.dataset if req.task_id else None,
                created_at=now,
                expires_at=now + req.ttl_s,
            )
            self._infos[sandbox_id] = info
            self.stats.created_total += 1
            return info
        finally:
            self._reserved -= 1

    async def _source_dir(self, req: CreateSandbox) -> Path | None:
        if req.task_id is None:
            return None
        task_id = req.task_id
        try:
            task = await asyncio.to_thread(lambda: load_dataset(req.dataset).task(task_id))
        except TaskNotFound as e:
            raise SandboxError(f"unknown task: {e}", 404) from e
        return task.repo_dir

    def get(self, sandbox_id: str) -> SandboxInfo:
        info = self._infos.get(sandbox_id)
        if info is None:
            raise SandboxNotFound(f"no sandbox {sandbox_id!r}")
        return info

    def list(self) -> builtins.list[SandboxInfo]:
        return list(self._infos.values())

    def __len__(self) -> int:
        return len(self._infos)

    async def exec(
        self,
        sandbox_id: str,
        command: str,
        *,
        cwd: str = "",
        timeout: float | None = None,
        env: dict[str, str] | None = None,
    ) -> ExecResult:
        req = ExecRequest(command=command, cwd=cwd, timeout=timeout, env=env or {})
        return await self.exec_request(sandbox_id, req)

    async def exec_request(self, sandbox_id: str, req: ExecRequest) -> ExecResult:
        self.get(sandbox_id)
        if req.timeout is None:
            req = req.model_copy(update={"timeout": self.default_timeout})
        self.execs_running += 1
        try:
            result = await self.backend.exec(sandbox_id, req, self.output_limit)
        finally:
            self.execs_running -= 1
        self.stats.execs_total += 1
        self.stats.exec_seconds_total += result.duration_s
        if result.timed_out:
            self.stats.exec_timeouts += 1
        if result.truncated:
            self.stats.exec_truncations += 1
        return result

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        self.get(sandbox_id)
        return await self.backend.read_file(sandbox_id, path)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        self.get(sandbox_id)
        await self.backend.write_file(sandbox_id, path, data)

    async def delete(self, sandbox_id: str) -> None:
        self.get(sandbox_id)
        self._infos.pop(sandbox_id, None)
        try:
            await self.backend.delete(sandbox_id)
        finally:
            self.stats.deleted_total += 1
