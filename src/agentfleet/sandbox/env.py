"""RemoteDockerEnvironment: an agent's execution environment backed by a sandbox server.

The name is kept from the origin system, whose agents ran their commands in a Docker
container behind an HTTP server. Async code (``LightAgent``) calls :meth:`aexecute`, which
returns the typed :class:`~agentfleet.sandbox.base.ExecResult` (``output``, ``returncode``,
``timed_out``, ``truncated``, ``duration_s``). Sync code gets mini-swe-agent 1.x's
``Environment`` protocol: ``execute(command, cwd="", *, timeout=None)`` returns the dict
``{"output", "returncode", "timed_out", "truncated"}`` (mini-swe-agent's two keys plus the
two flags; see :func:`minisweagent_v1_output`).

From sync code, calls run on a private ``asyncio.Runner`` owned by the environment (created
on first use and kept until :meth:`close`), so its HTTP connection pool lives across calls.
Calling the sync methods from inside a running event loop raises ``RuntimeError``: they would
block that loop; use ``await env.aexecute(...)`` there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from agentfleet.sandbox.base import CreateSandbox, ExecResult, Sandboxes

T = TypeVar("T")


def _make_sandboxes(
    base_url: str | None, sandboxes: Sandboxes | None, token: str | None = None
) -> Sandboxes:
    if sandboxes is not None:
        return sandboxes
    if not base_url:
        raise ValueError("give base_url (a sandbox server) or sandboxes (a Sandboxes object)")
    from agentfleet.sandbox.client import SandboxClient

    return SandboxClient(base_url, token=token)


class RemoteDockerEnvironment:
    """Run an agent's commands in one sandbox.

    Args:
        sandbox_id: the sandbox to use (see :meth:`acreate` / :meth:`create_for_task`
            to make one).
        base_url: the sandbox server, e.g. ``http://127.0.0.1:9527``.
        sandboxes: a ``Sandboxes`` object instead of ``base_url`` (in-process service,
            a client with its own pool).
        cwd: default working directory, relative to the sandbox workdir.
        timeout: default command timeout in seconds (None: the server's default).
        env: extra environment variables for every command.
        owns_sandbox: delete the sandbox at :meth:`cleanup` / :meth:`acleanup`.
        token: the sandbox server's bearer token, with ``base_url`` (default
            ``$AGENTFLEET_SANDBOX_TOKEN``).
    """

    def __init__(
        self,
        sandbox_id: str,
        base_url: str | None = None,
        *,
        sandboxes: Sandboxes | None = None,
        cwd: str = "",
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        owns_sandbox: bool = False,
        token: str | None = None,
    ) -> None:
        self.sandbox_id = sandbox_id
        self.base_url = base_url
        self.sandboxes = _make_sandboxes(base_url, sandboxes, token)
        self.cwd = cwd
        self.timeout = timeout
        self.env = dict(env or {})
        self.owns_sandbox = owns_sandbox
        self.workdir: str | None = None
        self.last_result: ExecResult | None = None
        self._runner: asyncio.Runner | None = None
        self._lock = threading.Lock()
        self._deleted = False

    def __repr__(self) -> str:
        return f"RemoteDockerEnvironment({self.sandbox_id!r}, {self.sandboxes!r})"

    # factories -------------------------------------------------------------------------
    @classmethod
    async def acreate(
        cls,
        task_id: str | None = None,
        dataset: str | None = None,
        *,
        base_url: str | None = None,
        sandboxes: Sandboxes | None = None,
        ttl_s: float | None = None,
        run: str = "",
        token: str | None = None,
        **kwargs: Any,
    ) -> RemoteDockerEnvironment:
        """Create a sandbox for a task and an environment that owns (and deletes) it
        (``dataset`` / ``ttl_s`` None: the server's defaults)."""
        sbx = _make_sandboxes(base_url, sandboxes, token)
        fields: dict[str, Any] = {"task_id": task_id, "run": run}
        if dataset is not None:  # unset: CreateSandbox's default
            fields["dataset"] = dataset
        if ttl_s is not None:  # unset: the server's default
            fields["ttl_s"] = ttl_s
        info = await sbx.create(CreateSandbox(**fields))
        env = cls(info.sandbox_id, base_url, sandboxes=sbx, owns_sandbox=True, **kwargs)
        env.workdir = info.workdir
        return env

    @classmethod
    def create_for_task(
        cls,
        task_id: str | None = None,
        dataset: str | None = None,
        *,
        base_url: str | None = None,
        sandboxes: Sandboxes | None = None,
        ttl_s: float | None = None,
        run: str = "",
        **kwargs: Any,
    ) -> RemoteDockerEnvironment:
        """Sync :meth:`acreate`; the environment keeps the runner it was created on."""
        _no_running_loop("RemoteDockerEnvironment.create_for_task", "acreate")
        runner = asyncio.Runner()
        try:
            env = runner.run(
                cls.acreate(
                    task_id,
                    dataset,
                    base_url=base_url,
                    sandboxes=sandboxes,
                    ttl_s=ttl_s,
                    run=run,
                    **kwargs,
                )
            )
        except BaseException:
            runner.close()
            raise
        env._runner = runner
        return env

    # commands ----------------------------------------------------------------------------
    async def aexecute(
        self,
        command: str,
        cwd: str = "",
        timeout: float | None = None,
    ) -> ExecResult:
        """Run ``command`` in the sandbox (``cwd`` and ``timeout`` unset: this environment's,
        then the server's defaults); the server's typed result."""
        result = await self.sandboxes.exec(
            self.sandbox_id,
            command,
            cwd=cwd or self.cwd,
            timeout=timeout if timeout is not None else self.timeout,
            env=self.env or None,
        )
        self.last_result = result
        return result

    def execute(
        self, command: str, cwd: str = "", *, timeout: float | None = None
    ) -> dict[str, Any]:
        """mini-swe-agent 1.x's ``execute``: run ``command`` from sync code (not inside an
        event loop: use :meth:`aexecute`) and return :func:`minisweagent_v1_output`'s dict.
        The typed result stays in :attr:`last_result`."""
        result = self._run_sync(self.aexecute(command, cwd, timeout), "execute", "aexecute")
        return minisweagent_v1_output(result)

    def get_template_vars(self) -> dict[str, Any]:
        return {
            "sandbox_id": self.sandbox_id,
            "cwd": self.cwd,
            "workdir": self.workdir,
            "timeout": self.timeout,
        }

    # files -------------------------------------------------------------------------------
    async def aread_file(self, path: str) -> bytes:
        return await self.sandboxes.read_file(self.sandbox_id, path)

    async def awrite_file(self, path: str, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        await self.sandboxes.write_file(self.sandbox_id, path, raw)

    def read_file(self, path: str) -> bytes:
        return self._run_sync(self.aread_file(path), "read_file", "aread_file")

    def write_file(self, path: str, data: bytes | str) -> None:
        self._run_sync(self.awrite_file(path, data), "write_file", "awrite_file")

    # teardown ----------------------------------------------------------------------------
    async def acleanup(self) -> None:
        """Delete the sandbox if this environment created it."""
        if self.owns_sandbox and not self._deleted:
            self._deleted = True
            await self.sandboxes.delete(self.sandbox_id)

    async def aclose(self) -> None:
        await self.acleanup()

    def cleanup(self) -> None:
        """Delete the sandbox if this environment created it, then close the runner."""
        try:
            if self.owns_sandbox and not self._deleted:
                self._run_sync(self.acleanup(), "cleanup", "acleanup")
        finally:
            self.close()

    def close(self) -> None:
        """Close the private runner (and with it its HTTP pool); the sandbox is kept."""
        with self._lock:
            runner, self._runner = self._runner, None
        if runner is not None:
            runner.close()

    def __enter__(self) -> RemoteDockerEnvironment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    async def __aenter__(self) -> RemoteDockerEnvironment:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # sync plumbing -----------------------------------------------------------------------
    def _run_sync(self, coro: Coroutine[Any, Any, T], name: str, async_name: str) -> T:
        try:
            _no_running_loop(f"RemoteDockerEnvironment.{name}", async_name)
        except RuntimeError:
            coro.close()
            raise
        with self._lock:
            if self._runner is None:
                self._runner = asyncio.Runner()
            return self._runner.run(coro)


def minisweagent_v1_output(result: ExecResult) -> dict[str, Any]:
    """``result`` as mini-swe-agent 1.x's ``execute`` returns it: ``output`` and
    ``returncode``, plus agentfleet's ``timed_out`` and ``truncated`` flags."""
    return {
        "output": result.output,
        "returncode": result.returncode,
        "timed_out": result.timed_out,
        "truncated": result.truncated,
    }


def _no_running_loop(what: str, async_name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{what}() was called inside a running event loop, which it would block; "
        f"use `await env.{async_name}(...)` there"
    )
