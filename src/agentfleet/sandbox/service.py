"""SandboxService: the ``Sandboxes`` protocol on top of a Backend, with tasks, limits, reaping."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentfleet.sandbox.base import (
    DEFAULT_EXEC_TIMEOUT,
    DEFAULT_MAX_EXECS,
    DEFAULT_MAX_EXECS_PER_SANDBOX,
    DEFAULT_MAX_SANDBOXES,
    DEFAULT_OUTPUT_LIMIT,
    DEFAULT_REAP_INTERVAL_S,
    DEFAULT_TTL_S,
    MAX_TTL_S,
    Backend,
    CreateSandbox,
    ExecRequest,
    ExecResult,
    SandboxBusy,
    SandboxError,
    SandboxInfo,
    SandboxNotFound,
    new_sandbox_id,
)
from agentfleet.sandbox.image_box import ImageSource
from agentfleet.tasks.task import TaskNotFound, load_dataset

log = logging.getLogger(__name__)

__all__ = ["SandboxService", "ServiceStats", "new_sandbox_id"]

MAX_KEYS_PER_SANDBOX = 8  # finished keyed execs kept per sandbox (up to 8 x the output cap)
DETACH_GRACE_S = 120.0  # a keyed exec nobody waits for is killed after this
BUSY_RETRY_AFTER_S = 1.0  # Retry-After of a 429


@dataclass
class _KeyedExec:
    """One exec sent with an Idempotency-Key: owned by the service, not by a request."""

    fingerprint: str
    task: asyncio.Task[ExecResult]
    waiters: int = 0
    abandon: asyncio.TimerHandle | None = None


@dataclass
class ServiceStats:
    created_total: int = 0
    deleted_total: int = 0
    reaped_total: int = 0
    create_failures: int = 0
    rejected_total: int = 0  # over max_sandboxes
    execs_rejected: int = 0  # over max_execs / max_execs_per_sandbox
    execs_total: int = 0
    exec_timeouts: int = 0
    exec_truncations: int = 0
    exec_seconds_total: float = 0.0


class SandboxService:
    """Sandboxes for tasks, served in-process (the HTTP server wraps one of these).

    Args:
        backend: where the sandboxes live (``ProcessBackend``, ``DockerBackend``).
        output_limit: characters of output kept per exec (head + tail).
        max_sandboxes: sandboxes alive at once; creating one more answers 429.
        max_creating: sandboxes being created at once (copy + git); others wait their turn.
        reap_period_s: how often expired sandboxes (``ttl_s`` elapsed) are deleted (0: never).
        default_timeout: exec timeout when a request names none.
        default_ttl_s: ttl of sandboxes whose create request names none.
        detach_grace_s: an exec sent with an Idempotency-Key outlives its client's
            disconnect this long (for a retry to pick up its result), then it is killed.
        max_execs, max_execs_per_sandbox: commands running at once, in all and in one
            sandbox; one more answers 429 (:class:`SandboxBusy`, ``Retry-After``). A keyed
            exec counts until it ends, whether its client waits or not.
        dataset_roots: a create request's ``dataset`` loads only when it is bundled or a folder
            under one of these (else 404, see :func:`agentfleet.tasks.load_dataset`).

    Execs with an idempotency key run once: the same key while it runs waits for the same
    result, afterwards returns the stored result (the last ``MAX_KEYS_PER_SANDBOX`` per
    sandbox); the same key with another request body is refused (422).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
        max_sandboxes: int = DEFAULT_MAX_SANDBOXES,
        max_creating: int = 16,
        reap_period_s: float = DEFAULT_REAP_INTERVAL_S,
        default_timeout: float = DEFAULT_EXEC_TIMEOUT,
        default_ttl_s: float = DEFAULT_TTL_S,
        detach_grace_s: float = DETACH_GRACE_S,
        max_execs: int = DEFAULT_MAX_EXECS,
        max_execs_per_sandbox: int = DEFAULT_MAX_EXECS_PER_SANDBOX,
        dataset_roots: Iterable[str | Path] = (),
    ) -> None:
        if not 0 < default_ttl_s <= MAX_TTL_S:
            raise ValueError(f"default_ttl_s must be in (0, {MAX_TTL_S:g}] seconds")
        if min(max_sandboxes, max_creating, max_execs, max_execs_per_sandbox) < 1:
            raise ValueError(
                "max_sandboxes, max_creating, max_execs and max_execs_per_sandbox must be "
                "at least 1"
            )
        if reap_period_s < 0:
            raise ValueError("reap_period_s must be >= 0 (0: no periodic reaping)")
        self.backend = backend
        self.output_limit = output_limit
        self.max_sandboxes = max_sandboxes
        self.max_creating = max_creating
        self.reap_period_s = reap_period_s
        self.default_timeout = default_timeout
        self.default_ttl_s = default_ttl_s
        self.detach_grace_s = detach_grace_s
        self.max_execs = max_execs
        self.max_execs_per_sandbox = max_execs_per_sandbox
        self.dataset_roots = tuple(Path(r) for r in dataset_roots)
        self.stats = ServiceStats()
        self._infos: dict[str, SandboxInfo] = {}
        self._creating: dict[str, asyncio.Event] = {}  # id -> set when its creation ended
        self._doomed: set[str] = set()  # deleted while being created
        self._keyed: dict[str, OrderedDict[str, _KeyedExec]] = {}
        self._keyed_tasks: set[asyncio.Task[ExecResult]] = set()
        self._reserved = 0
        self._create_sem: asyncio.Semaphore | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self.execs_running = 0
        self._admitted: dict[str, int] = {}  # sandbox id -> execs admitted, not ended
        self._admitted_total = 0

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
        tasks = list(self._keyed_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for keys in self._keyed.values():
            self._cancel_timers(keys)
        self._keyed.clear()
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
            raise SandboxBusy(
                f"too many sandboxes: {self.max_sandboxes} alive at most; delete some first",
                BUSY_RETRY_AFTER_S,
            )
        sandbox_id = req.sandbox_id or new_sandbox_id()
        if sandbox_id in self._infos or sandbox_id in self._creating:
            raise SandboxError(f"sandbox {sandbox_id!r} exists already", 409)
        if "ttl_s" not in req.model_fields_set:
            req = req.model_copy(update={"ttl_s": self.default_ttl_s})
        ended = asyncio.Event()
        self._creating[sandbox_id] = ended
        self._reserved += 1
        try:
            source = await self._source_dir(req)
            if self._create_sem is None:
                self._create_sem = asyncio.Semaphore(self.max_creating)
            async with self._create_sem:
                if sandbox_id in self._doomed:
                    raise SandboxError(f"sandbox {sandbox_id!r} was deleted while queued", 409)
                try:
                    # an ImageSource only reaches the docker backend (checked above)
                    backend: Any = self.backend
                    workdir = await backend.create(sandbox_id, source, req)
                except BaseException:
                    self.stats.create_failures += 1
                    raise
            if sandbox_id in self._doomed:  # a delete came while the backend worked
                await asyncio.shield(self.backend.delete(sandbox_id))
                self.stats.deleted_total += 1
                raise SandboxError(f"sandbox {sandbox_id!r} was deleted while being created", 409)
            now = time.time()
            info = SandboxInfo(
                sandbox_id=sandbox_id,
                backend=self.backend.name,
                workdir=workdir,
                task_id=req.task_id,
                dataset=req.dataset if req.task_id else None,
                created_at=now,
                expires_at=now + req.ttl_s,
                run=req.run,
            )
            self._infos[sandbox_id] = info
            self.stats.created_total += 1
            return info
        finally:
            # no await from the doomed check to here: a delete sees either state, never between
            self._reserved -= 1
            self._creating.pop(sandbox_id, None)
            self._doomed.discard(sandbox_id)
            ended.set()

    async def _source_dir(self, req: CreateSandbox) -> Path | ImageSource | None:
        """The task's repository: a host folder, or (image task) its image's workdir."""
        if req.task_id is None:
            return None
        task_id = req.task_id
        try:
            task = await asyncio.to_thread(
                lambda: load_dataset(req.dataset, self.dataset_roots).task(task_id)
            )
        except TaskNotFound as e:
            raise SandboxError(f"unknown task: {e}", 404) from e
        if task.image is None or task.workdir is None:
            return task.repo_dir
        if self.backend.name != "docker":
            raise SandboxError(
                f"task {task.id!r} runs in its own image ({task.image}): it needs the docker "
                f"backend (this server runs the {self.backend.name} backend)",
                422,
            )
        return ImageSource(task.id, task.image, task.workdir, task.env_activate)

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
        idempotency_key: str | None = None,
    ) -> ExecResult:
        req = ExecRequest(command=command, cwd=cwd, timeout=timeout, env=env or {})
        return await self.exec_request(sandbox_id, req, idempotency_key)

    async def exec_request(
        self, sandbox_id: str, req: ExecRequest, idempotency_key: str | None = None
    ) -> ExecResult:
        """Run one command; with ``idempotency_key``, at most once per key (see the class)."""
        self.get(sandbox_id)
        if idempotency_key is None:
            self._admit(sandbox_id)
            try:
                return await self._exec(sandbox_id, req)
            finally:
                self._release(sandbox_id)
        fingerprint = hashlib.sha256(req.model_dump_json().encode()).hexdigest()
        keys = self._keyed.setdefault(sandbox_id, OrderedDict())
        entry = keys.get(idempotency_key)
        if entry is None:
            self._admit(sandbox_id)  # a retry of a known key is not a new command
            task = asyncio.create_task(self._exec(sandbox_id, req), name=f"exec-{sandbox_id}")
            entry = _KeyedExec(fingerprint, task)
            keys[idempotency_key] = entry
            self._keyed_tasks.add(task)
            # released when the task ends, even if cancelled before it ever ran
            task.add_done_callback(lambda t: self._release(sandbox_id))
            task.add_done_callback(lambda t: self._keyed_done(sandbox_id, t))
        elif entry.fingerprint != fingerprint:
            raise SandboxError(
                "Idempotency-Key already used for a different request in this sandbox", 422
            )
        return await self._attach(entry)

    async def _attach(self, entry: _KeyedExec) -> ExecResult:
        """Wait for a keyed exec; the last waiter leaving starts its abandon timer."""
        entry.waiters += 1
        if entry.abandon is not None:
            entry.abandon.cancel()
            entry.abandon = None
        try:
            return await asyncio.shield(entry.task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if entry.task.cancelled() and (current is None or not current.cancelling()):
                raise SandboxError(
                    "the command of this Idempotency-Key was killed (its client went away "
                    "or the server is stopping)",
                    409,
                ) from None
            raise
        finally:
            entry.waiters -= 1
            if entry.waiters == 0 and not entry.task.done():
                loop = asyncio.get_running_loop()
                entry.abandon = loop.call_later(self.detach_grace_s, entry.task.cancel)

    def _admit(self, sandbox_id: str) -> None:
        """Count one more running exec, or raise :class:`SandboxBusy` at a limit."""
        here = self._admitted.get(sandbox_id, 0)
        if here >= self.max_execs_per_sandbox:
            self.stats.execs_rejected += 1
            raise SandboxBusy(
                f"too many commands running in sandbox {sandbox_id!r}: "
                f"{self.max_execs_per_sandbox} at most (max_execs_per_sandbox)",
                BUSY_RETRY_AFTER_S,
            )
        if self._admitted_total >= self.max_execs:
            self.stats.execs_rejected += 1
            raise SandboxBusy(
                f"too many commands running on this server: {self.max_execs} at most (max_execs)",
                BUSY_RETRY_AFTER_S,
            )
        self._admitted[sandbox_id] = here + 1
        self._admitted_total += 1

    def _release(self, sandbox_id: str) -> None:
        left = self._admitted.get(sandbox_id, 0) - 1
        if left > 0:
            self._admitted[sandbox_id] = left
        else:
            self._admitted.pop(sandbox_id, None)
        self._admitted_total -= 1

    def _keyed_done(self, sandbox_id: str, task: asyncio.Task[ExecResult]) -> None:
        self._keyed_tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: waiters (if any) get it themselves
        keys = self._keyed.get(sandbox_id)
        if keys is None:
            return
        done = [k for k, e in keys.items() if e.task.done()]
        for key in done[: max(0, len(done) - MAX_KEYS_PER_SANDBOX)]:
            del keys[key]

    @staticmethod
    def _cancel_timers(keys: OrderedDict[str, _KeyedExec]) -> None:
        for entry in keys.values():
            if entry.abandon is not None:
                entry.abandon.cancel()
                entry.abandon = None

    async def _exec(self, sandbox_id: str, req: ExecRequest) -> ExecResult:
        if req.timeout is None:
            req = req.model_copy(update={"timeout": self.default_timeout})
        self.execs_running += 1
        try:
            result = await self.backend.exec(sandbox_id, req, self.output_limit)
        except SandboxError:
            if sandbox_id not in self._infos:
                raise _deleted_under(sandbox_id) from None
            raise
        finally:
            self.execs_running -= 1
        if sandbox_id not in self._infos:  # its kill is not the command's result
            raise _deleted_under(sandbox_id)
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
        """Delete a sandbox (killing its commands). One still being created is deleted as
        soon as its creation ends; this returns then."""
        ended = self._creating.get(sandbox_id)
        if ended is not None:
            self._doomed.add(sandbox_id)
            await ended.wait()
            return
        self.get(sandbox_id)
        self._infos.pop(sandbox_id, None)
        keys = self._keyed.pop(sandbox_id, None)
        if keys is not None:
            self._cancel_timers(keys)  # its running execs end with the sandbox
        try:
            await self.backend.delete(sandbox_id)
        finally:
            self.stats.deleted_total += 1


def _deleted_under(sandbox_id: str) -> SandboxNotFound:
    """A command whose sandbox was deleted while it ran (ttl, gc, its owner): an error, not
    the killed command's exit code dressed as its output."""
    return SandboxNotFound(f"sandbox {sandbox_id!r} was deleted while the command ran")
