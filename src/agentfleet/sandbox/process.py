"""ProcessBackend: sandboxes as folders on this machine, commands as local process groups.

The folders (layout, marker, copy of the task's repository, baseline commit, confined file
access, reaping of dead servers' folders) are :class:`~agentfleet.sandbox.folders.SandboxFolders`'
job; this module runs the commands.

Every command runs as ``bash -c COMMAND`` in its own session / process group. When the command
finishes (or times out, or the request is cancelled) the whole group gets SIGKILL: background
children such as ``sleep 1000 &`` never outlive the exec that started them. (A process that
calls ``setsid`` itself leaves the group; under bubblewrap it still dies with the sandbox's PID
namespace.) Under bubblewrap (``confine``: ``required``, ``auto`` = if it works here, or
``off``) commands see only what they need of the host, read-only (:mod:`agentfleet.sandbox.bwrap`),
their own workdir and /tmp writable, no network and their own PID namespace; the request's
``env`` is set inside the sandbox only, never on bwrap itself.

A SIGKILLed server cannot kill anything: its exec guard (:mod:`agentfleet.sandbox.guard`, a
helper process that sees the server's end of a pipe close) SIGKILLs every command group still
running, and bubblewrap's ``--die-with-parent`` takes confined commands down too. What escaped
its group (``setsid``), or everything if the guard died with the server, is killed by the next
server's orphan reaping or ``agentfleet sandbox gc``: the process groups recorded under
``pgids/`` and every process whose environment names the sandbox (``AGENTFLEET_SANDBOX``).

Commands are spawned with :class:`~agentfleet.sandbox.child.Child` (``Popen``, pidfd and
output pipe watched on the event loop), not asyncio's subprocess transport.

Limits (:class:`~agentfleet.sandbox.limits.Limits`, the operator's maxima): memory, processes
and CPU share by the sandbox's cgroups where this server may make them, else memory and
processes by rlimits; file size and CPU time by rlimits. A command is born in its cgroups
and runs nothing before its rlimits are set (:mod:`agentfleet.sandbox.process_limits`: no
extra process, no ``preexec_fn``).
:meth:`ProcessBackend.limits_report` says which limit is enforced how (``/healthz``).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Literal, cast

from agentfleet.sandbox.base import (
    DEFAULT_EXEC_TIMEOUT,
    CreateSandbox,
    ExecRequest,
    ExecResult,
    SandboxError,
)
from agentfleet.sandbox.bwrap import BWRAP_ENV, command_argv, system_binds
from agentfleet.sandbox.capture import OutputCapture, exec_result
from agentfleet.sandbox.child import Child
from agentfleet.sandbox.command_env import command_env
from agentfleet.sandbox.folders import (
    MAX_FILE_BYTES,
    PGIDS_DIR,
    SANDBOX_ENV,
    SandboxFolder,
    SandboxFolders,
    default_root,
    kill_group,
)
from agentfleet.sandbox.guard import ExecGuard
from agentfleet.sandbox.limits import (
    DEFAULT_FILE_SIZE_MB,
    DEFAULT_MEMORY_MB,
    DEFAULT_PIDS_LIMIT,
    Limits,
)
from agentfleet.sandbox.process_limits import LimitEnforcer

log = logging.getLogger(__name__)

__all__ = [
    "CONFINE_MODES",
    "Confine",
    "ProcessBackend",
    "confine_mode",
    "default_confine",
    "default_root",
]

Confine = Literal["required", "auto", "off"]
CONFINE_MODES: tuple[Confine, ...] = ("required", "auto", "off")

_DRAIN_AFTER_KILL_S = 5.0
# A command still running this long is registered with the exec guard (killed with a dying
# server, recorded for the reaper); shorter ones (most agent commands) cost the guard nothing.
GUARD_AFTER_S = 0.01


def default_confine(host: str) -> Confine:
    """The confinement a server bound to ``host`` gets by default: ``auto`` on loopback,
    ``required`` beyond (a remote code execution service must fail closed)."""
    import ipaddress

    if host == "localhost":
        return "auto"
    try:
        return "auto" if ipaddress.ip_address(host).is_loopback else "required"
    except ValueError:  # a host name: may resolve beyond loopback
        return "required"


def confine_mode(confine: str | bool | None) -> Confine:
    """``required`` / ``auto`` / ``off``; ``True`` / ``None`` / ``False`` mean the same."""
    if confine is None or isinstance(confine, bool):
        return "auto" if confine is None else "required" if confine else "off"
    if confine in CONFINE_MODES:
        return cast(Confine, confine)
    raise ValueError(f"confine={confine!r}: expected one of {', '.join(CONFINE_MODES)}")


async def _runs_ok(*argv: str, timeout: float = 10.0) -> bool:
    """Does ``argv`` start and exit 0 within ``timeout``? (a probe, killed if it hangs)"""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=BWRAP_ENV,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return False
    try:
        return await asyncio.wait_for(proc.wait(), timeout) == 0
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False


class ProcessBackend:
    """Sandboxes as local folders; commands as process groups, under bubblewrap when possible.

    Args:
        root: folder holding the sandboxes (default ``$TMPDIR/agentfleet-sandboxes``).
        confine: ``required`` (or ``True``): commands run under bubblewrap, and :meth:`start`
            fails if it does not work here; ``auto`` (or ``None``): under bubblewrap if it
            works here (checked once in :meth:`start`), else unconfined with a warning;
            ``off`` (or ``False``): never confined.
        network: let confined commands use the network (default: no network).
        path: ``PATH`` given to commands (default: the server's own ``PATH``).
        max_file_bytes: size cap of :meth:`write_file` / :meth:`read_file` (413 beyond).
        memory_mb, pids_limit, cpus, file_size_mb, cpu_time_s: each sandbox's limits, and the
            maxima of a create request's own (422 beyond); ``None``: no limit (no CPU quota by
            default: timed evaluation runs must not be throttled). All ``None``: commands run
            exactly as without limits.
        cgroups: use cgroups where this server may (else rlimits only).

    A request that names no timeout gets ``DEFAULT_EXEC_TIMEOUT`` (the service fills in its
    own default before it calls the backend).
    """

    name = "process"

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        confine: Confine | str | bool | None = "auto",
        network: bool = False,
        path: str | None = None,
        max_file_bytes: int = MAX_FILE_BYTES,
        memory_mb: int | None = DEFAULT_MEMORY_MB,
        pids_limit: int | None = DEFAULT_PIDS_LIMIT,
        cpus: float | None = None,
        file_size_mb: int | None = DEFAULT_FILE_SIZE_MB,
        cpu_time_s: int | None = None,
        cgroups: bool = True,
    ) -> None:
        self.folders = SandboxFolders(root, path=path, max_file_bytes=max_file_bytes)
        self.limits = Limits(
            None, memory_mb, cpus, pids_limit, file_size_mb=file_size_mb, cpu_time_s=cpu_time_s
        )
        self.enforcer = LimitEnforcer(self.limits, cgroups=cgroups)
        self.confine_option = confine_mode(confine)
        self.network = network
        self.confined = False
        self.bwrap: str | None = None
        self._system: list[str] = []  # bwrap's host part (system_binds), once probed
        self.bash = "bash"  # its full path once started
        self.guard = ExecGuard()
        self._started = False

    @property
    def path(self) -> str:
        """``PATH`` of sandbox commands (resolved once started)."""
        return self.folders.path

    @property
    def root(self) -> Path:
        """The folder holding the sandboxes (resolved once started)."""
        return self.folders.root

    @property
    def instance_id(self) -> str:
        """This backend instance's id, in its sandboxes' markers."""
        return self.folders.instance_id

    # lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Decide confinement (bubblewrap), make the root, reap orphans, start the guard."""
        if self._started:
            return
        await self.probe_confinement()
        self._started = True
        await self.folders.start()
        if "\n" in str(self.root):  # the exec guard's records are lines
            raise SandboxError(f"sandbox root {str(self.root)!r} contains a newline")
        bash = await asyncio.to_thread(lambda: shutil.which("bash", path=self.path))
        self.bash = bash or "bash"
        await self.enforcer.start()
        await self.guard.start()

    async def probe_confinement(self) -> bool:
        """Whether commands will run under bubblewrap (``confined``), as ``confine`` asks:
        ``required`` raises :class:`SandboxError` when bwrap does not work here."""
        self.confined = False
        if self.confine_option == "off":
            return False
        self.bwrap = await asyncio.to_thread(shutil.which, "bwrap")
        if self.bwrap is not None:
            self._system = await asyncio.to_thread(system_binds)
            self.confined = await self._bwrap_works()
        if not self.confined:
            if self.confine_option == "required":
                raise SandboxError(
                    "confinement required but bubblewrap (bwrap) is missing or does not work "
                    "here (install bubblewrap, or --confine auto|off on a trusted loopback)"
                )
            log.warning("bubblewrap unavailable: sandbox commands run unconfined")
        return self.confined

    async def _bwrap_works(self) -> bool:
        assert self.bwrap is not None
        return await _runs_ok(
            self.bwrap, "--clearenv", *self._system, "--unshare-pid", "--die-with-parent", "true"
        )

    async def aclose(self) -> None:
        """Delete every sandbox this backend made (killing their running commands)."""
        await self.folders.aclose()
        await self.enforcer.aclose()
        await self.guard.aclose()

    def sandbox_ids(self) -> list[str]:
        return self.folders.sandbox_ids()

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self.folders.get(sandbox_id).dir

    # sandboxes and files: the folders' ------------------------------------------------
    def limits_report(self) -> dict[str, dict[str, Any]]:
        """Each limit's value and what enforces it (None: nothing), for ``/healthz``."""
        return self.enforcer.report()

    async def create(self, sandbox_id: str, source_dir: Path | None, req: CreateSandbox) -> str:
        res = self.limits.resolve(req)  # 422 before anything is made
        if not self._started:
            await self.start()
        folder = await self.folders.create(sandbox_id, source_dir, req)
        try:
            await self.enforcer.add(sandbox_id, res)
        except BaseException:
            await asyncio.shield(self.folders.delete(sandbox_id))
            raise
        return str(folder.work)

    async def delete(self, sandbox_id: str) -> None:
        try:
            await self.folders.delete(sandbox_id)
        finally:
            await self.enforcer.remove(sandbox_id)

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        return await self.folders.read_file(sandbox_id, path)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        await self.folders.write_file(sandbox_id, path, data)

    # exec ------------------------------------------------------------------------------
    def _env(self, sb: SandboxFolder, extra: dict[str, str]) -> dict[str, str]:
        tmp = "/tmp" if self.confined else str(sb.tmp)
        env = command_env(self.path, str(sb.work), tmp, extra)
        env[SANDBOX_ENV] = str(sb.dir)  # how orphan reaping finds what escaped the group
        return env

    def _command(
        self, sb: SandboxFolder, cwd: Path, command: str, extra_env: dict[str, str]
    ) -> tuple[list[str], dict[str, str]]:
        """The argv and the environment of the process to spawn: unconfined, the command's
        own; under bwrap, the server's fixed one (the command's is set inside the sandbox)."""
        env = self._env(sb, extra_env)
        if not self.confined:
            return [self.bash, "-c", command], env
        assert self.bwrap is not None
        argv = command_argv(
            self.bwrap,
            self._system,
            tmp=str(sb.tmp),
            work=str(sb.work),
            cwd=str(cwd),
            env=env,
            network=self.network,
            command=command,
        )
        return argv, BWRAP_ENV

    async def exec(self, sandbox_id: str, req: ExecRequest, output_limit: int) -> ExecResult:
        sb = self.folders.get(sandbox_id)
        # "" is the workdir itself: no path to resolve, no thread hop
        cwd = await self.folders.resolve_cwd(sb, req.cwd) if req.cwd else sb.work
        timeout = req.timeout or DEFAULT_EXEC_TIMEOUT
        capture = OutputCapture(output_limit)
        started = time.monotonic()

        gate = None
        if not self.enforcer.limited(sandbox_id):  # exactly as without limits
            argv, env = self._command(sb, cwd, req.command, req.env)
            child = Child.spawn(argv, cwd=cwd, env=env, capture=capture)
        else:
            command = self.enforcer.command(sandbox_id, req.command)
            argv, env = self._command(sb, cwd, command, req.env)
            child, gate = self.enforcer.spawn(
                sandbox_id, argv, confined=self.confined, cwd=cwd, env=env, capture=capture
            )
        pgid = child.pid  # start_new_session: the leader's pid is the group id
        timed_out = False
        guard: asyncio.TimerHandle | None = None
        try:
            sb.pgids.add(pgid)
            guard = asyncio.get_running_loop().call_later(
                GUARD_AFTER_S, self.guard.add, pgid, sb.dir / PGIDS_DIR
            )
            if sb.deleting:
                kill_group(pgid)
            try:
                async with asyncio.timeout(timeout):
                    if gate is not None:
                        await gate.open(child)  # limits set, then the command runs
                    await asyncio.shield(child.exited)
            except TimeoutError:
                timed_out = True
        finally:
            # The leader has exited, timed out or we were cancelled: nothing of the group
            # may survive the exec (also kills `cmd &` children left behind). The leader is
            # not reaped yet, so the group id still names this group.
            kill_group(pgid)
            if gate is not None:
                gate.close()  # after the kill: bwrap goes on when its gate just closes
            sb.pgids.discard(pgid)
            if guard is not None:
                guard.cancel()
            self.guard.remove(pgid)  # if it was registered
            try:
                await child.drain(_DRAIN_AFTER_KILL_S)
            finally:
                child.close()

        return exec_result(
            capture,
            child.reap(),
            timed_out=timed_out,
            timeout=timeout,
            elapsed=time.monotonic() - started,
        )
