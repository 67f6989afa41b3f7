"""ProcessBackend: sandboxes as folders on this machine, commands as local process groups.

The folders (layout, marker, copy of the task's repository, baseline commit, confined file
access, reaping of dead servers' folders) are :class:`~agentfleet.sandbox.folders.SandboxFolders`'
job; this module runs the commands.

Every command runs as ``bash -c COMMAND`` in its own session / process group. When the command
finishes (or times out, or the request is cancelled) the whole group gets SIGKILL: background
children such as ``sleep 1000 &`` never outlive the exec that started them. (A process that
calls ``setsid`` itself leaves the group; under bubblewrap it still dies with the sandbox's PID
namespace.) With bubblewrap available (``confine=None`` means "if it works here") commands see
a read-only root file system, only their own workdir and /tmp writable, no network and their
own PID namespace; other sandboxes under ``root`` are hidden.

A SIGKILLed server cannot kill anything: bubblewrap's ``--die-with-parent`` (confined) or
``setpriv --pdeathsig KILL`` (unconfined, for the command's main process) take its commands
down with it, and whatever is left (background children of unconfined commands) is killed by
the next server's orphan reaping or ``agentfleet sandbox gc``: the process groups recorded under
``pgids/`` and every process whose environment names the sandbox (``AGENTFLEET_SANDBOX``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path

from agentfleet.sandbox.base import (
    DEFAULT_EXEC_TIMEOUT,
    CreateSandbox,
    ExecRequest,
    ExecResult,
    SandboxError,
)
from agentfleet.sandbox.capture import OutputCapture, exec_result, read_pipe
from agentfleet.sandbox.command_env import command_env
from agentfleet.sandbox.folders import (
    MAX_FILE_BYTES,
    SANDBOX_ENV,
    SandboxFolder,
    SandboxFolders,
    default_root,
    kill_group,
)

log = logging.getLogger(__name__)

__all__ = ["ProcessBackend", "default_root"]

_DRAIN_AFTER_KILL_S = 5.0


async def _runs_ok(*argv: str, timeout: float = 10.0) -> bool:
    """Does ``argv`` start and exit 0 within ``timeout``? (a probe, killed if it hangs)"""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
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
        confine: ``True`` requires bubblewrap, ``False`` never uses it, ``None`` uses it if
            ``bwrap`` is installed and works here (checked once in :meth:`start`).
        network: let confined commands use the network (default: no network).
        path: ``PATH`` given to commands (default: the server's own ``PATH``).
        max_file_bytes: size cap of :meth:`write_file` / :meth:`read_file` (413 beyond).

    A request that names no timeout gets ``DEFAULT_EXEC_TIMEOUT`` (the service fills in its
    own default before it calls the backend).
    """

    name = "process"

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        confine: bool | None = None,
        network: bool = False,
        path: str | None = None,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.folders = SandboxFolders(root, path=path, max_file_bytes=max_file_bytes)
        self.confine_option = confine
        self.network = network
        self.confined = False
        self.bwrap: str | None = None
        self.setpriv: str | None = None  # unconfined: gives commands a parent-death signal
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
        """Decide confinement (bubblewrap, else setpriv), make the root, reap orphans."""
        if self._started:
            return
        self._started = True
        if self.confine_option is not False:
            self.bwrap = await asyncio.to_thread(shutil.which, "bwrap")
            self.confined = self.bwrap is not None and await self._bwrap_works()
            if self.confine_option and not self.confined:
                raise SandboxError("confine=True but bubblewrap (bwrap) does not work here")
            if not self.confined:
                log.warning("bubblewrap unavailable: sandbox commands run unconfined")
        if not self.confined:
            self.setpriv = await self._setpriv_works()
        await self.folders.start()

    async def _bwrap_works(self) -> bool:
        assert self.bwrap is not None
        return await _runs_ok(
            self.bwrap, "--ro-bind", "/", "/", "--unshare-pid", "--die-with-parent", "true"
        )

    async def _setpriv_works(self) -> str | None:
        setpriv = await asyncio.to_thread(shutil.which, "setpriv")
        if setpriv is None:
            return None
        return setpriv if await _runs_ok(setpriv, "--pdeathsig", "KILL", "true") else None

    async def aclose(self) -> None:
        """Delete every sandbox this backend made (killing their running commands)."""
        await self.folders.aclose()

    def sandbox_ids(self) -> list[str]:
        return self.folders.sandbox_ids()

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self.folders.get(sandbox_id).dir

    # sandboxes and files: the folders' ------------------------------------------------
    async def create(self, sandbox_id: str, source_dir: Path | None, req: CreateSandbox) -> str:
        if not self._started:
            await self.start()
        return str((await self.folders.create(sandbox_id, source_dir, req)).work)

    async def delete(self, sandbox_id: str) -> None:
        await self.folders.delete(sandbox_id)

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

    def _argv(self, sb: SandboxFolder, cwd: Path, command: str) -> list[str]:
        if not self.confined:
            if self.setpriv is not None:  # dies with this server even if SIGKILLed
                return [self.setpriv, "--pdeathsig", "KILL", "bash", "-c", command]
            return ["bash", "-c", command]
        assert self.bwrap is not None
        argv = [
            self.bwrap,
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--bind",
            str(sb.tmp),
            "/tmp",
            "--tmpfs",
            str(self.root),  # hides the other sandboxes
            "--bind",
            str(sb.work),
            str(sb.work),
            "--unshare-pid",
            "--die-with-parent",
            "--chdir",
            str(cwd),
        ]
        if not self.network:
            argv.append("--unshare-net")
        return [*argv, "bash", "-c", command]

    async def _spawn(
        self, sb: SandboxFolder, cwd: Path, req: ExecRequest
    ) -> tuple[asyncio.subprocess.Process, int]:
        """Start the command as the leader of a new session, stdout and stderr into one pipe;
        (the process, the pipe's read end)."""
        r, w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv(sb, cwd, req.command),
                cwd=cwd,
                env=self._env(sb, req.env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=w,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            os.close(r)
            raise SandboxError(f"cannot start command: {e}") from e
        finally:
            os.close(w)
        return proc, r

    async def exec(self, sandbox_id: str, req: ExecRequest, output_limit: int) -> ExecResult:
        sb = self.folders.get(sandbox_id)
        cwd = await self.folders.resolve_cwd(sb, req.cwd)
        timeout = req.timeout or DEFAULT_EXEC_TIMEOUT
        capture = OutputCapture(output_limit)
        started = time.monotonic()

        proc, r = await self._spawn(sb, cwd, req)
        pgid = proc.pid  # start_new_session: the leader's pid is the group id
        if sb.deleting:
            kill_group(pgid)
        sb.pgids.add(pgid)
        try:
            transport, done = await read_pipe(r, capture)
        except BaseException:
            kill_group(pgid)
            sb.pgids.discard(pgid)
            raise
        timed_out = False
        try:
            # for the next server's reaper, should this one be SIGKILLed
            await self.folders.record_group(sb, pgid)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                timed_out = True
        finally:
            # The leader has exited, timed out or we were cancelled: nothing of the group
            # may survive the exec (also kills `cmd &` children left behind).
            kill_group(pgid)
            sb.pgids.discard(pgid)
            try:
                if proc.returncode is None:
                    await asyncio.wait_for(asyncio.shield(proc.wait()), _DRAIN_AFTER_KILL_S)
                # the pipe closes once every holder is dead; a process that escaped the
                # group (setsid) may hold it open: stop reading after a grace period
                await asyncio.wait_for(asyncio.shield(done), _DRAIN_AFTER_KILL_S)
            except TimeoutError:
                pass
            finally:
                transport.close()
                await self.folders.forget_group(sb, pgid)

        return exec_result(
            capture,
            proc.returncode,
            timed_out=timed_out,
            timeout=timeout,
            elapsed=time.monotonic() - started,
        )
