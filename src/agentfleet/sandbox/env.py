"""RemoteDockerEnvironment: an agent's execution environment backed by a sandbox server.

The name is kept from the origin system, whose agents ran their commands in a Docker
container behind an HTTP server. Three ways to use it:

- async code (``LightAgent``) calls :meth:`aexecute`, which returns the typed
  :class:`~agentfleet.sandbox.base.ExecResult`;
- mini-swe-agent 2.x: ``execute(action: dict, cwd="", *, timeout=None)`` returns
  :func:`minisweagent_output`'s dict and raises mini-swe-agent's ``Submitted`` when the
  output starts with the submit sentinel (returncode 0), like its own environments; with
  ``config``, ``get_template_vars(**kw)`` and ``serialize()``. A mini-swe-agent YAML selects
  it with ``environment_class: agentfleet.sandbox.env.RemoteDockerEnvironment`` and
  ``base_url`` plus ``sandbox_id``, or ``task_id`` / ``dataset`` / ``image`` to create one;
- mini-swe-agent 1.x: ``execute(command: str, ...)`` returns
  :func:`minisweagent_v1_output`'s dict.

Sync methods run on the process's background loop (:mod:`agentfleet.http.background`),
so every thread's environment shares one HTTP pool. Called inside a running event loop
they raise ``RuntimeError``: they would block that loop; ``await env.aexecute(...)`` there.
"""

from __future__ import annotations

import platform
from collections.abc import Coroutine
from typing import Any, TypeVar

from pydantic import BaseModel

from agentfleet.http.background import defer, run_sync
from agentfleet.models.offline import SUBMIT_SENTINEL
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


class RemoteDockerEnvironmentConfig(BaseModel):
    """The settings mini-swe-agent reads (``env.config``) and saves in trajectories."""

    sandbox_id: str | None = None
    base_url: str | None = None
    cwd: str = ""
    timeout: float | None = None
    env: dict[str, str] = {}
    task_id: str | None = None
    dataset: str | None = None
    image: str | None = None
    ttl_s: float | None = None
    run: str = ""


class RemoteDockerEnvironment:
    """Run an agent's commands in one sandbox.

    Args:
        sandbox_id: the sandbox to use; None: create one now (sync, from ``task_id`` /
            ``dataset`` / ``image``) that this environment owns.
        base_url: the sandbox server, e.g. ``http://127.0.0.1:9527``.
        sandboxes: a ``Sandboxes`` object instead of ``base_url`` (in-process service,
            a client with its own pool).
        cwd: default working directory, relative to the sandbox workdir.
        timeout: default command timeout in seconds (None: the server's default).
        env: extra environment variables for every command.
        owns_sandbox: delete the sandbox at :meth:`cleanup` / :meth:`acleanup`.
        token: the sandbox server's bearer token, with ``base_url`` (default
            ``$AGENTFLEET_SANDBOX_TOKEN``).
        task_id, dataset, image, ttl_s, run: the sandbox to create when ``sandbox_id`` is
            None (None: the server's defaults).
    """

    def __init__(
        self,
        sandbox_id: str | None = None,
        base_url: str | None = None,
        *,
        sandboxes: Sandboxes | None = None,
        cwd: str = "",
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        owns_sandbox: bool = False,
        token: str | None = None,
        task_id: str | None = None,
        dataset: str | None = None,
        image: str | None = None,
        ttl_s: float | None = None,
        run: str = "",
    ) -> None:
        self.config = RemoteDockerEnvironmentConfig(
            sandbox_id=sandbox_id,
            base_url=base_url,
            cwd=cwd,
            timeout=timeout,
            env=dict(env or {}),
            task_id=task_id,
            dataset=dataset,
            image=image,
            ttl_s=ttl_s,
            run=run,
        )
        self.base_url = base_url
        self.sandboxes = _make_sandboxes(base_url, sandboxes, token)
        self._own_client = sandboxes is None  # a client of any loop: __del__ may use it
        self.owns_sandbox = owns_sandbox
        self.workdir: str | None = None
        self.last_result: ExecResult | None = None
        self._deleted = False
        if sandbox_id is None:  # mini-swe-agent's YAML: make the sandbox now
            self.owns_sandbox = True
            self._run_sync(self._create(), "__init__", "acreate")

    # settings kept in ``config`` (what mini-swe-agent serializes), read as attributes
    @property
    def sandbox_id(self) -> str:
        assert self.config.sandbox_id is not None
        return self.config.sandbox_id

    @property
    def cwd(self) -> str:
        return self.config.cwd

    @property
    def timeout(self) -> float | None:
        return self.config.timeout

    @property
    def env(self) -> dict[str, str]:
        return self.config.env

    def __repr__(self) -> str:
        return f"RemoteDockerEnvironment({self.config.sandbox_id!r}, {self.sandboxes!r})"

    async def _create(self) -> None:
        c = self.config
        fields: dict[str, Any] = {"task_id": c.task_id, "image": c.image, "run": c.run}
        if c.dataset is not None:  # unset: CreateSandbox's default
            fields["dataset"] = c.dataset
        if c.ttl_s is not None:  # unset: the server's default
            fields["ttl_s"] = c.ttl_s
        info = await self.sandboxes.create(CreateSandbox(**fields))
        self.config.sandbox_id = info.sandbox_id
        self.workdir = info.workdir

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
        image: str | None = None,
        **kwargs: Any,
    ) -> RemoteDockerEnvironment:
        """Create a sandbox for a task and an environment that owns (and deletes) it
        (``dataset`` / ``ttl_s`` None: the server's defaults)."""
        env = cls(
            "",
            base_url,
            sandboxes=sandboxes,
            token=token,
            owns_sandbox=True,
            task_id=task_id,
            dataset=dataset,
            image=image,
            ttl_s=ttl_s,
            run=run,
            **kwargs,
        )
        await env._create()
        return env

    @classmethod
    def create_for_task(cls, *args: Any, **kwargs: Any) -> RemoteDockerEnvironment:
        """Sync :meth:`acreate` (the same arguments), on the background loop."""
        return run_sync(
            cls.acreate(*args, **kwargs),
            what="RemoteDockerEnvironment.create_for_task() (use acreate)",
        )

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
        self, action: dict[str, Any] | str, cwd: str = "", *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Run a command from sync code (not inside an event loop: use :meth:`aexecute`).

        mini-swe-agent 2.x passes ``action`` as a dict (``{"command": ...}``): the answer is
        :func:`minisweagent_output`'s dict, and ``Submitted`` is raised when the output's
        first line is the submit sentinel and the command succeeded. mini-swe-agent 1.x
        passes the command string: :func:`minisweagent_v1_output`'s dict. The typed result
        stays in :attr:`last_result`."""
        command = action.get("command", "") if isinstance(action, dict) else action
        if not isinstance(command, str) or not command:
            raise ValueError(f"execute() needs a command string, got {action!r}")
        result = self._run_sync(self.aexecute(command, cwd, timeout), "execute", "aexecute")
        if not isinstance(action, dict):
            return minisweagent_v1_output(result)
        output = minisweagent_output(result)
        _check_submitted(output)
        return output

    def get_template_vars(self, **kwargs: Any) -> dict[str, Any]:
        """Jinja variables for mini-swe-agent's templates: the config, the sandbox, and
        ``platform.uname()``'s fields (its own templates use ``system``, ``release``...)."""
        return {
            **platform.uname()._asdict(),
            **self.config.model_dump(),
            "sandbox_id": self.config.sandbox_id,
            "workdir": self.workdir,
            **kwargs,
        }

    def serialize(self) -> dict[str, Any]:
        """mini-swe-agent's trajectory entry for the environment."""
        cls = type(self)
        return {
            "info": {
                "config": {
                    "environment": self.config.model_dump(mode="json"),
                    "environment_type": f"{cls.__module__}.{cls.__name__}",
                }
            }
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
        if self.owns_sandbox and not self._deleted and self.config.sandbox_id:
            self._deleted = True
            await self.sandboxes.delete(self.sandbox_id)

    async def aclose(self) -> None:
        await self.acleanup()

    def cleanup(self) -> None:
        """Delete the sandbox if this environment created it."""
        if self.owns_sandbox and not self._deleted:
            self._run_sync(self.acleanup(), "cleanup", "acleanup")

    def __del__(self) -> None:
        """An owned sandbox nobody cleaned up (mini-swe-agent's batch runner never calls
        ``cleanup``) is deleted when the environment goes, as mini-swe-agent's own
        DockerEnvironment does: on the background loop, never waited for here."""
        if (
            getattr(self, "_own_client", False)
            and self.owns_sandbox
            and not self._deleted
            and self.config.sandbox_id
        ):
            self._deleted = True
            defer(self.sandboxes.delete(self.config.sandbox_id))

    def close(self) -> None:
        """Nothing to close: the HTTP pool is the background loop's (kept for 1.x code)."""

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
        what = f"RemoteDockerEnvironment.{name}() (use `await env.{async_name}(...)`)"
        return run_sync(coro, what=what)


def minisweagent_v1_output(result: ExecResult) -> dict[str, Any]:
    """``result`` as mini-swe-agent 1.x's ``execute`` returns it: ``output`` and
    ``returncode``, plus agentfleet's ``timed_out`` and ``truncated`` flags."""
    return {
        "output": result.output,
        "returncode": result.returncode,
        "timed_out": result.timed_out,
        "truncated": result.truncated,
    }


def minisweagent_output(result: ExecResult) -> dict[str, Any]:
    """``result`` as mini-swe-agent 2.x's environments return it (``output``, ``returncode``,
    ``exception_info``: why the command was cut short, else empty), plus agentfleet's
    ``timed_out`` / ``truncated`` flags, also under ``extra`` (copied into the observation
    message's ``extra`` by mini-swe-agent)."""
    notes = []
    if result.timed_out:
        notes.append("the command timed out and was killed")
    if result.truncated:
        notes.append("the output was too long: its middle was cut")
    flags = {"timed_out": result.timed_out, "truncated": result.truncated}
    return {
        **minisweagent_v1_output(result),
        "exception_info": "; ".join(notes),
        "extra": {**flags, "duration_s": result.duration_s},
    }


def _check_submitted(output: dict[str, Any]) -> None:
    """Raise mini-swe-agent's ``Submitted`` as its own environments do: output's first line
    is the sentinel and the command succeeded; the submission is the rest of the output."""
    lines = str(output.get("output", "")).lstrip().splitlines(keepends=True)
    if lines and lines[0].strip() == SUBMIT_SENTINEL and output.get("returncode") == 0:
        from minisweagent.exceptions import Submitted  # a 2.x caller has it installed

        submission = "".join(lines[1:])
        raise Submitted(
            {
                "role": "exit",
                "content": submission,
                "extra": {"exit_status": "Submitted", "submission": submission},
            }
        )
