"""A sandbox command as a child process, watched on the event loop without threads.

:meth:`Child.spawn` starts it with :class:`subprocess.Popen` (``vfork`` + ``exec``) as the
leader of a new session, stdout and stderr into one pipe. Its exit is watched with a pidfd
and its output read from the nonblocking pipe, both by ``loop.add_reader``: no asyncio
subprocess transport and no child-watcher thread per command (together about 2 ms of server
CPU per exec, measured in docs/benchmarks.md).

The leader is reaped (:meth:`Child.reap`) only after the caller has killed its group: until
then its pid, and so the group id, cannot name another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from agentfleet.sandbox.base import SandboxError
from agentfleet.sandbox.capture import OutputCapture

__all__ = ["Child"]

_READ_CHUNK = 65536


class Child:
    """A running command: ``exited`` (the leader is gone), ``eof`` (every writer of its output
    pipe is gone), :meth:`reap` for the exit status, :meth:`close` for the fds."""

    def __init__(self, proc: subprocess.Popen[bytes], out_fd: int, capture: OutputCapture) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._capture = capture
        self._out_fd = out_fd
        self._pidfd = -1
        self._loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[None] = self._loop.create_future()
        self.eof: asyncio.Future[None] = self._loop.create_future()
        self._waiter: asyncio.Future[int] | None = None
        self._loop.add_reader(out_fd, self._on_output)
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):  # no pidfd here (old kernel, some sandboxes)
            self._waiter = asyncio.ensure_future(asyncio.to_thread(proc.wait))
            self._waiter.add_done_callback(lambda _: self._on_exit())
        else:
            self._loop.add_reader(self._pidfd, self._on_exit)

    @classmethod
    def spawn(
        cls,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: dict[str, str],
        capture: OutputCapture,
        pass_fds: Sequence[int] = (),
    ) -> Child:
        """Start ``argv`` (``pass_fds``: fds it inherits, e.g. a limits gate's);
        :class:`SandboxError` if it cannot start (both pipe ends closed)."""
        r, w = os.pipe()
        try:
            os.set_blocking(r, False)
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=w,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=pass_fds,
            )
        except BaseException as e:
            os.close(r)
            if isinstance(e, OSError | ValueError):
                status = 422 if isinstance(e, ValueError) or e.errno == errno.E2BIG else 500
                raise SandboxError(f"cannot start command: {e}", status) from e
            raise
        finally:
            os.close(w)
        try:
            return cls(proc, r, capture)
        except BaseException:
            proc.kill()
            proc.wait()
            os.close(r)
            raise

    def _on_output(self) -> None:
        try:
            data = os.read(self._out_fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._capture.feed(data)
            return
        self._loop.remove_reader(self._out_fd)
        if not self.eof.done():
            self.eof.set_result(None)

    def _on_exit(self) -> None:
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
        if not self.exited.done():
            self.exited.set_result(None)

    def reap(self) -> int | None:
        """The exit status once the leader has exited (None before), reaping it."""
        if self._waiter is not None:
            return self.proc.returncode
        return self.proc.poll() if self.exited.done() else None

    async def drain(self, grace: float) -> None:
        """After a kill: wait up to ``grace`` seconds for the exit and the end of output (a
        process that left the group may hold the pipe open); never cancels the futures."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await asyncio.shield(self.exited)
                await asyncio.shield(self.eof)

    def close(self) -> None:
        """Stop watching; close the fds (idempotent). Reaps the leader if it has exited."""
        if self._out_fd >= 0:
            self._loop.remove_reader(self._out_fd)
            os.close(self._out_fd)
            self._out_fd = -1
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        self.reap()
