"""The process backend's limits: which mechanism holds each one, and how a command gets them.

=============  ===============================  ==========================================
limit          with cgroups (preferred)         without (unprivileged, no delegation)
=============  ===============================  ==========================================
memory_mb      memory cgroup (per sandbox)      ``RLIMIT_AS`` (per process)
pids_limit     pids cgroup (per sandbox)        ``RLIMIT_NPROC`` (per *user*; root: none)
cpus           cpu cgroup quota (per sandbox)   not enforced
file_size_mb   ``RLIMIT_FSIZE`` (per file a process writes)
cpu_time_s     ``RLIMIT_CPU`` (per process)
=============  ===============================  ==========================================

No extra process and no ``preexec_fn``: a command is spawned as on a server without limits
(``Popen``, a vfork), but held at a :class:`Gate` before any of it runs. Meanwhile the server
writes its pid to the sandbox's ``cgroup.procs`` and sets its rlimits with ``prlimit(2)``
(syscalls, no fork), then opens the gate; what it forks afterwards inherits both.

- Unconfined, the command is ``bash -c 'read -r -n1 -u<fd> _ || exit 125; exec <fd><&-;
  COMMAND'``: the gate shares the command's first line (bash's line numbers stay right), and
  bash parses a whole line before it runs any of it. No byte (the server died): exit 125.
- Under bubblewrap, the pid we spawn is bwrap's, which forks the sandbox at once: bwrap's own
  ``--info-fd`` tells the sandbox's pid, and ``--block-fd`` holds it before it starts the
  command. (bwrap goes on if that pipe just closes: on failure the server kills the group
  first; a dead server takes bwrap down by ``--die-with-parent``.)

A sandbox with no limit at all runs its commands exactly as a server without limits does.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentfleet.sandbox.base import SandboxError
from agentfleet.sandbox.capture import OutputCapture
from agentfleet.sandbox.cgroups import CgroupTree, SandboxCgroup, reap_stale
from agentfleet.sandbox.child import Child
from agentfleet.sandbox.limits import LIMIT_NAMES, MB, Limits, Resources

log = logging.getLogger(__name__)

__all__ = ["Gate", "LimitEnforcer"]

_INFO_MAX = 4096  # bwrap's --info-fd JSON is a few dozen bytes


@dataclass
class _Box:
    """One sandbox's limits as set on a command: its cgroups, and rlimits by prlimit."""

    cgroup: SandboxCgroup | None
    rlimits: list[tuple[int, int]]

    def apply(self, pid: int) -> None:
        """Put ``pid`` into the cgroups, set its rlimits (soft and hard); ``OSError``."""
        if self.cgroup is not None:
            self.cgroup.join(pid)
        for which, value in self.rlimits:
            resource.prlimit(pid, which, (value, value))


class Gate:
    """Holds one command before it runs until :meth:`open` has set its limits (see the
    module's docstring); :meth:`close` closes what is left of its pipes (idempotent)."""

    def __init__(self, box: _Box, confined: bool) -> None:
        self.box = box
        self.confined = confined
        self._fds: list[int] = []
        self.read, self.write = self._pipe()  # the command waits on `read`
        os.set_blocking(self.write, False)  # one byte into an empty pipe
        self.info_r, self.info_w = self._pipe() if confined else (-1, -1)

    def _pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self._fds += [r, w]
        return r, w

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` (``bash -c CMD``, or ``bwrap ... bash -c CMD``) held at this gate."""
        if self.confined:
            fds = ["--info-fd", str(self.info_w), "--block-fd", str(self.read)]
            return [argv[0], *fds, *argv[1:]]
        bash, flag, command = argv
        r = self.read
        return [bash, flag, f"read -r -n1 -u{r} _ || exit 125; exec {r}<&-; {command}"]

    def spawn(
        self, argv: list[str], *, cwd: Path, env: dict[str, str], capture: OutputCapture
    ) -> Child:
        """:meth:`Child.spawn` of ``argv`` held here; the child's ends closed in the server."""
        try:
            child_fds = (self.read, self.info_w) if self.confined else (self.read,)
            return Child.spawn(
                self.argv(argv), cwd=cwd, env=env, capture=capture, pass_fds=child_fds
            )
        except BaseException:
            self.close()
            raise
        finally:
            self._close(self.read, self.info_w)

    async def open(self, child: Child) -> None:
        """Set the limits on the command (unconfined: ``child`` itself; under bwrap: the
        sandbox process it reports), then let it run. :class:`SandboxError` (500) if a limit
        cannot be set: the caller kills the group before it closes the gate."""
        pid: int | None = child.pid
        if self.confined:
            pid = await self._sandbox_pid()
        if pid is not None:
            try:
                self.box.apply(pid)
            except OSError as e:
                if e.errno != errno.ESRCH:  # gone already: nothing left to limit
                    raise SandboxError(f"cannot set the sandbox's limits: {e}", 500) from e
        try:
            os.write(self.write, b"1")
        except BrokenPipeError:  # the command is gone (e.g. a syntax error)
            pass
        self._close(self.write)

    async def _sandbox_pid(self) -> int | None:
        """The sandbox's pid from bwrap's ``--info-fd`` JSON; None if bwrap ended first."""
        loop = asyncio.get_running_loop()
        got = bytearray()
        done: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            try:
                chunk = os.read(self.info_r, _INFO_MAX)
            except BlockingIOError:
                return
            got.extend(chunk)
            if (not chunk or b"}" in got or len(got) > _INFO_MAX) and not done.done():
                done.set_result(None)

        os.set_blocking(self.info_r, False)
        loop.add_reader(self.info_r, on_readable)
        try:
            await done
        finally:
            loop.remove_reader(self.info_r)
        try:
            pid = json.loads(got.decode())["child-pid"]
        except (ValueError, KeyError, TypeError):
            return None
        return pid if isinstance(pid, int) and pid > 0 else None

    def _close(self, *fds: int) -> None:
        for fd in fds:
            if fd in self._fds:
                self._fds.remove(fd)
                os.close(fd)

    def close(self) -> None:
        self._close(*list(self._fds))


class LimitEnforcer:
    """Makes and removes each sandbox's cgroups; gates its commands (:meth:`gate`)."""

    def __init__(self, limits: Limits, *, cgroups: bool = True) -> None:
        self.limits = limits
        self.use_cgroups = cgroups
        self.tree = CgroupTree({})
        self.root = os.geteuid() == 0
        self._boxes: dict[str, _Box] = {}

    async def start(self) -> None:
        """Remove dead servers' empty cgroups; make this backend's (where it may)."""
        if not self.use_cgroups:
            return
        stale = await asyncio.to_thread(reap_stale)
        if stale:
            log.info("removed %d cgroup folders of dead servers", len(stale))
        self.tree = await asyncio.to_thread(CgroupTree.probe)

    async def aclose(self) -> None:
        boxes, self._boxes = list(self._boxes.values()), {}
        await asyncio.to_thread(self._remove_all, boxes)

    def _remove_all(self, boxes: Sequence[_Box]) -> None:
        for box in boxes:
            if box.cgroup is not None:
                box.cgroup.remove()
        self.tree.close()

    # what enforces what ---------------------------------------------------------------
    def _how(self, name: str) -> str | None:
        """What enforces limit ``name`` (if set), None: nothing here."""
        cgroup = {"memory_mb": "memory", "pids_limit": "pids", "cpus": "cpu"}.get(name)
        how = self.tree.how(cgroup) if cgroup else None
        if how is not None:
            return f"{how} (per sandbox)"
        return {
            "memory_mb": "rlimit AS (per process)",
            "pids_limit": None if self.root else "rlimit NPROC (per user: all sandboxes)",
            "cpus": None,
            "file_size_mb": "rlimit FSIZE (per file)",
            "cpu_time_s": "rlimit CPU (per process)",
        }[name]

    def report(self) -> dict[str, dict[str, Any]]:
        """``{limit: {"value", "enforced_by"}}``; ``enforced_by`` None: not enforced."""
        report = {}
        for name in LIMIT_NAMES:
            value = getattr(self.limits, name)
            report[name] = {"value": value, "enforced_by": self._how(name) if value else None}
        return report

    # per sandbox ------------------------------------------------------------------------
    def _rlimits(self, res: Resources) -> list[tuple[int, int]]:
        ctl = self.tree.bases
        wanted = [
            (resource.RLIMIT_FSIZE, res.file_size_mb and res.file_size_mb * MB),
            (resource.RLIMIT_CPU, res.cpu_time_s),
        ]
        if "memory" not in ctl:
            wanted.append((resource.RLIMIT_AS, res.memory_mb and res.memory_mb * MB))
        if "pids" not in ctl and not self.root:
            wanted.append((resource.RLIMIT_NPROC, res.pids_limit))
        return [(which, value) for which, value in wanted if value]

    async def add(self, sandbox_id: str, res: Resources) -> None:
        """Make ``sandbox_id``'s cgroups and rlimits (500 if its cgroups fail)."""
        cgroup = None
        if self.tree.bases and res.any():
            try:
                cgroup = await asyncio.to_thread(self.tree.make, sandbox_id, res)
            except OSError as e:
                raise SandboxError(f"cannot make the sandbox's cgroups: {e}", 500) from e
        rlimits = self._rlimits(res)
        if cgroup is not None or rlimits:
            self._boxes[sandbox_id] = _Box(cgroup, rlimits)

    async def remove(self, sandbox_id: str) -> None:
        box = self._boxes.pop(sandbox_id, None)
        if box is not None and box.cgroup is not None:
            await asyncio.to_thread(box.cgroup.remove)

    def gate(self, sandbox_id: str, confined: bool) -> Gate | None:
        """A gate for a command of ``sandbox_id``; None if the sandbox has no limit."""
        box = self._boxes.get(sandbox_id)
        return Gate(box, confined) if box is not None else None
