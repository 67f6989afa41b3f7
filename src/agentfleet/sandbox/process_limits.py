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

No extra process and no ``preexec_fn`` (the spawn stays a vfork), and nothing of a command
runs before its limits hold:

- **cgroups (v1):** the command is born inside. The server's thread moves itself into the
  sandbox's cgroups, spawns, and moves back (:meth:`CgroupTree.inside`, about 40 us: a
  thread moving itself skips the kernel's global lock that a pid write takes).
- **rlimits:** ``builtin ulimit -f .. -t .. || exit 125; COMMAND``, on the command's first
  line (bash's line numbers stay right; bash parses a whole line before it runs any of it),
  unconfined and under bubblewrap alike. (A request that sets ``BASH_ENV`` or exports a
  function runs that before: rlimits are per process anyway, a guard against accidents,
  not a wall; the cgroups hold from birth.)
- **cgroups (v2, no per-thread moves):** the command is held at a :class:`Gate` while the
  server writes its pid to each ``cgroup.procs``: unconfined, a ``read`` of a gate pipe
  opens its first line; under bubblewrap, bwrap's ``--info-fd`` reports the sandbox's pid
  and ``--block-fd`` holds it before it starts ``bash``. bwrap goes on if that pipe merely
  closes: on failure the server kills the group first, and a dead server takes bwrap with
  it (``--die-with-parent``).

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
# bash's ulimit: option and unit of each rlimit
_ULIMIT_FLAG = {
    resource.RLIMIT_FSIZE: "f",
    resource.RLIMIT_CPU: "t",
    resource.RLIMIT_AS: "v",
    resource.RLIMIT_NPROC: "u",
}
_ULIMIT_UNIT = {
    resource.RLIMIT_FSIZE: 1024,
    resource.RLIMIT_CPU: 1,
    resource.RLIMIT_AS: 1024,
    resource.RLIMIT_NPROC: 1,
}


@dataclass
class _Box:
    """One sandbox's limits as set on a command: its cgroups, its rlimits (bash's
    ``ulimit``)."""

    cgroup: SandboxCgroup | None
    rlimits: list[tuple[int, int]]
    joined_at_spawn: bool  # v1: born in the cgroups, no pid to write

    def ulimit_prefix(self) -> str:
        """``builtin ulimit -f .. || exit 125; `` (empty if no rlimit)."""
        opts = " ".join(f"-{_ULIMIT_FLAG[w]} {v // _ULIMIT_UNIT[w]}" for w, v in self.rlimits)
        return f"builtin ulimit {opts} || exit 125; " if opts else ""

    def apply(self, pid: int) -> None:
        """Put ``pid`` into the cgroups (unless born there); ``OSError``."""
        if self.cgroup is not None and not self.joined_at_spawn:
            self.cgroup.join(pid)


class Gate:
    """Holds one command before it runs until :meth:`open` has put it into its cgroups by
    pid (v2; see the module's docstring); :meth:`close` closes what is left of its pipes
    (idempotent)."""

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
        """``argv`` (``bash -c CMD``, or ``bwrap ... bash -c CMD``) held at this gate (the
        ulimit prefix is already in ``CMD``)."""
        if self.confined:
            fds = ["--info-fd", str(self.info_w), "--block-fd", str(self.read)]
            return [argv[0], *fds, *argv[1:]]
        bash, flag, command = argv
        r = self.read
        return [bash, flag, f"read -r -n1 -u{r} _ || exit 125; exec {r}<&-; {command}"]

    def spawn(
        self,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        capture: OutputCapture,
        tree: CgroupTree,
    ) -> Child:
        """:meth:`Child.spawn` of ``argv`` held here (inside the cgroups, v1); the child's
        ends closed in the server."""
        try:
            child_fds = (self.read, self.info_w) if self.confined else (self.read,)
            with tree.inside(self.box.cgroup):
                return Child.spawn(
                    self.argv(argv), cwd=cwd, env=env, capture=capture, pass_fds=child_fds
                )
        except BaseException:
            self.close()
            raise
        finally:
            self._close(self.read, self.info_w)

    async def open(self, child: Child) -> None:
        """Put the command into its cgroups (unconfined: ``child`` itself; under bwrap: the
        sandbox process it reports), then let it run. :class:`SandboxError` (500) if they
        refuse it: the caller kills the group before it closes the gate."""
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
        for box in boxes:
            if box.cgroup is not None:
                box.cgroup.close()
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
            self._boxes[sandbox_id] = _Box(cgroup, rlimits, self.tree.self_join)

    async def remove(self, sandbox_id: str) -> None:
        box = self._boxes.pop(sandbox_id, None)
        if box is not None and box.cgroup is not None:
            box.cgroup.close()
            await asyncio.to_thread(box.cgroup.remove)

    def limited(self, sandbox_id: str) -> bool:
        """Does ``sandbox_id`` have any limit? (No: its commands run as without limits.)"""
        return sandbox_id in self._boxes

    def command(self, sandbox_id: str, command: str) -> str:
        """``command`` as a limited sandbox runs it: after its ``ulimit``."""
        return self._boxes[sandbox_id].ulimit_prefix() + command

    def spawn(
        self,
        sandbox_id: str,
        argv: list[str],
        *,
        confined: bool,
        cwd: Path,
        env: dict[str, str],
        capture: OutputCapture,
    ) -> tuple[Child, Gate | None]:
        """Spawn a command of a limited sandbox (``argv`` from :meth:`command`): inside its
        cgroups (v1), or held at a :class:`Gate` until its pid is in them (v2).
        :class:`SandboxError` 409 while the sandbox is being deleted, or is at its process
        limit; 500 if its cgroups refuse it (nothing spawned, or the group killed)."""
        box = self._boxes.get(sandbox_id)
        if box is None or (box.cgroup is not None and box.cgroup.closed):
            raise SandboxError(f"sandbox {sandbox_id} is being deleted", 409)
        try:
            if box.cgroup is not None and not box.joined_at_spawn:
                gate = Gate(box, confined)
                return gate.spawn(argv, cwd=cwd, env=env, capture=capture, tree=self.tree), gate
            with self.tree.inside(box.cgroup):
                return Child.spawn(argv, cwd=cwd, env=env, capture=capture), None
        except OSError as e:  # could not enter the cgroups: nothing was spawned
            raise SandboxError(f"cannot set the sandbox's limits: {e}", 500) from e
        except SandboxError as e:
            if isinstance(e.__cause__, OSError) and e.__cause__.errno == errno.EAGAIN:
                # born in the pids cgroup: the sandbox's own processes fill it
                raise SandboxError(
                    f"cannot start the command: the sandbox is at its process limit "
                    f"(pids_limit {self.limits.pids_limit}; processes that were just "
                    "killed count until they are reaped)",
                    409,
                ) from e
            raise
