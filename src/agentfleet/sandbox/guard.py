"""The exec guard: one small helper process per process backend that outlives a dying server
just long enough to SIGKILL every command group still running.

The server tells it about each group over a pipe (``+PGID DIR`` once a command has run
``GUARD_AFTER_S`` of :mod:`agentfleet.sandbox.process`, ``-PGID`` when it ends; ``DIR`` is the
sandbox's ``pgids/`` folder). The guard:

- keeps the group records ``DIR/PGID`` on disk for the next server's reaper (should the
  guard die with the server), written in batches every ``BATCH_S``: a command that starts
  and ends within one batch costs no file at all; a record holds the group leader's start
  in clock ticks since boot (so a reused pid is told apart whatever the wall clock did);
- when its end of the pipe reports EOF (the server exited, even by SIGKILL: the kernel
  closes the server's fds), SIGKILLs every group still registered, then exits.

This replaces a parent-death signal per command (``setpriv --pdeathsig KILL``, one more
``exec`` per command, or ``prctl`` in a ``preexec_fn``, which forces ``fork`` over ``vfork``)
and the two thread hops per exec that wrote and removed the records. If the guard dies, the
next write finds it gone (or its pidfd says so): a new one starts and is told every live
group again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["BATCH_S", "GUARD_CODE", "ExecGuard"]

BATCH_S = 0.05

# Runs as `python -I -S -c GUARD_CODE` (no site, no agentfleet import: starts in ~10 ms).
GUARD_CODE = f"""
import os, select, signal, time
live, todo, buf, due = {{}}, {{}}, b"", None
while True:
    wait = None if due is None else max(0.0, due - time.monotonic())
    if select.select([0], [], [], wait)[0]:
        data = os.read(0, 65536)
        if not data:
            break
        *lines, buf = (buf + data).split(b"\\n")
        for line in lines:
            op, (num, _, folder) = line[:1], line[1:].partition(b" ")
            if op == b"+":
                live[int(num)] = path = folder + b"/" + num
                todo[path] = num
            elif op == b"-" and int(num) in live:
                path = live.pop(int(num))
                if not todo.pop(path, False):
                    todo[path] = False
        if todo and due is None:
            due = time.monotonic() + {BATCH_S!r}
    if due is not None and time.monotonic() >= due:
        for path, num in todo.items():
            try:
                if num:
                    try:
                        with open(b"/proc/" + num + b"/stat", "rb") as f:
                            st = f.read()
                        ticks = st[st.rindex(b")") + 2 :].split()[19]
                    except (OSError, ValueError, IndexError):
                        ticks = b""
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                    os.write(fd, ticks)
                    os.close(fd)
                else:
                    os.unlink(path)
            except OSError:
                pass
        todo.clear()
        due = None
for pgid in live:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


@dataclass
class _Helper:
    """The current guard process and our fds to it."""

    proc: subprocess.Popen[bytes] | None = None
    fd: int = -1  # write end of its stdin
    pidfd: int = -1


def _release(h: _Helper) -> None:
    """Close our end of the pipe (the guard kills what is still registered and exits), reap it.

    Also run by ``weakref.finalize`` when an :class:`ExecGuard` is never closed (collected,
    or at interpreter exit): nothing is left running."""
    for fd in (h.fd, h.pidfd):
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    h.fd = h.pidfd = -1
    proc, h.proc = h.proc, None
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)  # it exits as soon as it reads EOF


class ExecGuard:
    """The server's side of the guard: :meth:`add` / :meth:`remove` never block or await."""

    def __init__(self) -> None:
        self._live: dict[int, bytes] = {}  # pgid -> its "+" line
        self._h = _Helper()
        self._pending = bytearray()  # not yet written (the pipe was full)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.restarts = 0
        weakref.finalize(self, _release, self._h)

    @property
    def pid(self) -> int | None:
        return self._h.proc.pid if self._h.proc is not None else None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn()

    def add(self, pgid: int, pgids_dir: Path) -> None:
        """Register group ``pgid``; its record goes to ``pgids_dir/<pgid>``."""
        line = b"+%d %s\n" % (pgid, os.fsencode(pgids_dir))
        if b"\n" in line[:-1]:
            raise ValueError(f"newline in sandbox folder {pgids_dir!r}")
        self._live[pgid] = line
        self._send(line)

    def remove(self, pgid: int) -> None:
        if self._live.pop(pgid, None) is not None:
            self._send(b"-%d\n" % pgid)

    async def aclose(self) -> None:
        """Close the pipe: the guard kills what is still registered (nothing, normally)
        and exits; wait for it."""
        self._closed = True
        self._unwatch()
        h, self._h = self._h, _Helper()
        await asyncio.to_thread(_release, h)

    # the pipe -------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        if self._closed:
            return
        if self._h.proc is None:  # a restart failed earlier: try again (it replays _live)
            self._spawn()
            return
        if self._pending:
            self._pending += data
            return
        try:
            n = os.write(self._h.fd, data)
        except BlockingIOError:
            n = 0
        except OSError:  # EPIPE: the guard is gone
            self._restart()
            return
        if n < len(data):
            self._pending += data[n:]
            assert self._loop is not None
            self._loop.add_writer(self._h.fd, self._flush)

    def _flush(self) -> None:
        try:
            n = os.write(self._h.fd, self._pending)
        except BlockingIOError:
            return
        except OSError:
            self._restart()
            return
        del self._pending[:n]
        if not self._pending and self._loop is not None:
            self._loop.remove_writer(self._h.fd)

    # the process ------------------------------------------------------------------------
    def _spawn(self) -> None:
        r, w = os.pipe()
        try:
            os.set_blocking(w, False)
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", GUARD_CODE],
                stdin=r,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                env={"PATH": os.defpath},
                start_new_session=True,  # no terminal signals: it must outlive the server
            )
        except BaseException as e:
            os.close(w)
            if not isinstance(e, OSError):
                raise
            log.error("cannot start the exec guard: %s", e)
            return
        finally:
            os.close(r)
        self._h.proc, self._h.fd = proc, w
        with contextlib.suppress(OSError, AttributeError):
            self._h.pidfd = os.pidfd_open(proc.pid)
            assert self._loop is not None
            self._loop.add_reader(self._h.pidfd, self._restart)
        if self._live:
            self._send(b"".join(self._live.values()))

    def _unwatch(self) -> None:
        if self._loop is not None:
            if self._h.pidfd >= 0:
                self._loop.remove_reader(self._h.pidfd)
            if self._h.fd >= 0:
                self._loop.remove_writer(self._h.fd)
        self._pending.clear()

    def _restart(self) -> None:
        """The guard died (its pidfd is readable, or the pipe is broken): start another."""
        if self._closed:
            return
        log.warning("the exec guard (pid %s) died: starting a new one", self.pid)
        self._unwatch()
        proc = self._h.proc
        if proc is not None and proc.poll() is None:
            proc.kill()  # not reading any more: a new one takes over
        _release(self._h)
        self.restarts += 1
        self._spawn()
