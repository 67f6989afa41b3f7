"""Per-sandbox cgroups for the process backend: memory, processes and CPU share.

Each sandbox gets a cgroup per controller it has a limit for, made *under the server's own*
cgroup (``<server's cgroup>/agentfleet-<pid>-t<start ticks>-<random>/<sandbox id>``), so a sandbox
never escapes a limit the server itself is under. v1 (one hierarchy per controller:
``memory``, ``pids``, ``cpu``) and v2 (one hierarchy; usable when the server's cgroup hands
the controllers down, ``cgroup.subtree_control``) are both handled; a controller we cannot
write (unprivileged, no delegation) is simply absent, and the backend falls back to rlimits.

A command is *born* inside them (v1): the server's spawning thread moves itself into the
sandbox's cgroups (``0`` written to each ``tasks``), spawns, and moves back
(:meth:`CgroupTree.inside`). A thread moving itself skips the kernel's global threadgroup
lock; writing another process's pid to ``cgroup.procs`` takes it, and on a busy machine
that waits for an RCU grace period: measured here 26 + 15 us for the two self-moves against
7.9 ms median for one pid write, execs 50 ms apart, load 3.4 on 2 cores. On v2 (no
per-thread moves for memory) the server writes the pid to ``cgroup.procs`` while the command
is held (:mod:`agentfleet.sandbox.process_limits`). The base folder names its owner (pid
and its start in ticks since boot, which no step of the wall clock moves): :func:`reap_stale`
removes those of dead servers once empty (what a dead server's commands left running is the
sandbox reaper's to kill, as without cgroups; ``sandbox gc`` kills).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agentfleet.sandbox.folders import owner_alive, process_start_ticks
from agentfleet.sandbox.limits import MB, Resources

log = logging.getLogger(__name__)

__all__ = ["CONTROLLERS", "CgroupTree", "SandboxCgroup", "reap_stale"]

CONTROLLERS = ("memory", "pids", "cpu")
_PREFIX = "agentfleet-"
_CFS_PERIOD_US = 100_000
# O_NONBLOCK: no effect on cgroupfs (its writes never wait for I/O; their cost is measured
# above), and says so to the event loop's blocking checks
_WRITE_FLAGS = os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK
# the limit each controller holds
_LIMIT_OF = {"memory": "memory_mb", "pids": "pids_limit", "cpu": "cpus"}


def _mounts() -> dict[str, tuple[str, str, str]]:
    """Cgroup mounts by controller: ``{"memory": (root, mountpoint, "v1"), "": (.., "v2")}``."""
    found: dict[str, tuple[str, str, str]] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts, rparts = left.split(), right.split()
            if len(parts) < 5 or len(rparts) < 3:
                continue
            root, mountpoint, fstype = parts[3], parts[4], rparts[0]
            if fstype == "cgroup2":
                found.setdefault("", (root, mountpoint, "v2"))
            elif fstype == "cgroup":
                for opt in rparts[2].split(","):
                    if opt in CONTROLLERS:
                        found.setdefault(opt, (root, mountpoint, "v1"))
    return found


def _own_dirs() -> dict[str, tuple[Path, str]]:
    """The server's own cgroup folder per controller, and the cgroup version holding it."""
    mounts = _mounts()
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                paths[c] = path
    dirs: dict[str, tuple[Path, str]] = {}
    for c in CONTROLLERS:
        key = c if c in mounts and c in paths else ""
        if key not in mounts or key not in paths:
            continue
        root, mountpoint, version = mounts[key]
        rel = os.path.relpath(paths[key], root) if paths[key].startswith(root) else None
        if rel is None or rel.startswith(".."):
            continue  # our cgroup is not visible under this mount
        d = Path(mountpoint) / rel
        if version == "v2":
            try:
                delegated = (d / "cgroup.subtree_control").read_text().split()
            except OSError:
                continue
            if c not in delegated:
                continue
        dirs[c] = (d.resolve(), version)
    return dirs


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _procs(d: Path) -> list[int]:
    try:
        return [int(p) for p in (d / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _rmdir_tree(d: Path, *, kill: bool, tries: int = 50) -> bool:
    """Remove cgroup ``d`` and its children; ``kill``: SIGKILL what is left inside first
    (retrying while the dying still count), else leave a cgroup that holds processes.
    True if it is gone."""
    if not d.is_dir():
        return True
    gone = all([_rmdir_tree(c, kill=kill, tries=tries) for c in d.iterdir() if c.is_dir()])
    for _ in range(tries if kill else 1):
        if kill:
            for pid in _procs(d):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        try:
            d.rmdir()
            return gone
        except FileNotFoundError:
            return gone
        except OSError:
            if kill:
                time.sleep(0.02)  # exiting processes still count for a moment
    return False


@dataclass
class SandboxCgroup:
    """One sandbox's cgroup folders and their ``cgroup.procs``, open for writing."""

    dirs: list[Path] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)  # cgroup.procs (v2: joins by pid)
    tasks: list[int] = field(default_factory=list)  # tasks (v1: the spawner moves itself)
    closed: bool = False

    def join(self, pid: int) -> None:
        """Move process ``pid`` into every folder (``OSError`` if one refuses; ``ESRCH``
        once closed: the sandbox is being deleted, its commands killed)."""
        if self.closed:
            raise OSError(errno.ESRCH, "the sandbox's cgroups are being removed")
        data = b"%d" % pid
        for fd in self.fds:
            os.write(fd, data)

    def close(self) -> None:
        """Close the ``cgroup.procs`` fds (on the thread that joins: the event loop's, so
        a join never writes to a closed, maybe reused, fd number)."""
        self.closed = True
        fds, self.fds, self.tasks = [*self.fds, *self.tasks], [], []
        for fd in fds:
            os.close(fd)

    def remove(self) -> None:
        """Kill what is left inside; remove the folders (blocking: off the loop, after
        :meth:`close`)."""
        self.close()
        for d in self.dirs:
            _rmdir_tree(d, kill=True)


class CgroupTree:
    """The backend's per-controller base folders (``bases``: controller -> (folder,
    version)); one per backend instance (a process may hold several)."""

    def __init__(self, bases: dict[str, tuple[Path, str]], homes: list[int] | None = None) -> None:
        self.bases = bases
        self.homes = homes or []  # the server's own ``tasks`` per v1 controller, to move back
        # every controller is v1: commands are spawned inside (:meth:`inside`)
        self.self_join = bool(bases) and len(self.homes) == len(bases)

    @contextlib.contextmanager
    def inside(self, cg: SandboxCgroup | None) -> Iterator[None]:
        """While in this block, the calling thread is in ``cg``'s cgroups (v1: what it
        spawns is born there); back in the server's own after (``OSError`` if either move
        fails; ``ESRCH`` once ``cg`` is closed)."""
        if cg is not None and cg.closed:
            raise OSError(errno.ESRCH, "the sandbox's cgroups are being removed")
        if cg is None or not self.self_join:
            yield
            return
        try:
            for fd in cg.tasks:
                os.write(fd, b"0")
            yield
        finally:
            try:
                for fd in self.homes:
                    os.write(fd, b"0")
            except OSError:  # what was spawned is where it belongs: not its error
                log.exception("cannot move the server's thread back to its own cgroups")

    def how(self, controller: str) -> str | None:
        """``cgroup v1`` / ``cgroup v2`` if this controller is ours, else None."""
        got = self.bases.get(controller)
        return f"cgroup {got[1]}" if got else None

    @classmethod
    def probe(cls) -> CgroupTree:
        """Make the base folders where we may (blocking), each checked by making and removing
        a child with its limit file; ``agentfleet-<pid>-t<start ticks>-<random>``."""
        pid = os.getpid()
        name = f"{_PREFIX}{pid}-t{process_start_ticks(pid) or 0}-{secrets.token_hex(4)}"
        bases: dict[str, tuple[Path, str]] = {}
        homes: list[int] = []
        try:
            own = _own_dirs()
        except OSError:
            own = {}
        for c, (d, version) in own.items():
            base = d / name
            try:
                base.mkdir(exist_ok=True)
                if version == "v2":
                    _write(base / "cgroup.subtree_control", f"+{c}")
                probe = base / "probe"
                probe.mkdir(exist_ok=True)
                ok = (probe / _limit_file(c, version)).exists()
                probe.rmdir()
            except OSError:
                ok = False
            if ok and version == "v1":
                with contextlib.suppress(OSError):
                    homes.append(os.open(d / "tasks", _WRITE_FLAGS))
            if ok:
                bases[c] = (base, version)
            else:
                with contextlib.suppress(OSError):
                    base.rmdir()
        return cls(bases, homes)

    def make(self, sandbox_id: str, res: Resources) -> SandboxCgroup | None:
        """The cgroups of a sandbox for ``res``'s limits that have a controller here
        (blocking; None if none; ``OSError`` on failure, leaving nothing behind)."""
        cg = SandboxCgroup()
        try:
            for c, (base, version) in self.bases.items():
                if getattr(res, _LIMIT_OF[c]) is None:
                    continue
                d = base / sandbox_id
                d.mkdir()
                cg.dirs.append(d)
                _set_limit(d, c, version, res)
                cg.fds.append(os.open(d / "cgroup.procs", _WRITE_FLAGS))
                if version == "v1":
                    cg.tasks.append(os.open(d / "tasks", _WRITE_FLAGS))
        except BaseException:
            cg.remove()
            raise
        return cg if cg.dirs else None

    def close(self) -> None:
        """Remove the base folders, killing what is left (blocking; after the sandboxes)."""
        homes, self.homes = self.homes, []
        for fd in homes:
            os.close(fd)
        for base, _ in self.bases.values():
            _rmdir_tree(base, kill=True)


def _limit_file(controller: str, version: str) -> str:
    v1 = {"memory": "memory.limit_in_bytes", "pids": "pids.max", "cpu": "cpu.cfs_quota_us"}
    v2 = {"memory": "memory.max", "pids": "pids.max", "cpu": "cpu.max"}
    return (v1 if version == "v1" else v2)[controller]


def _set_limit(d: Path, controller: str, version: str, res: Resources) -> None:
    if controller == "memory" and res.memory_mb is not None:
        memory = str(res.memory_mb * MB)
        _write(d / _limit_file("memory", version), memory)
        # no swap beyond memory, like docker's MemorySwap == Memory
        swap = d / ("memory.memsw.limit_in_bytes" if version == "v1" else "memory.swap.max")
        if swap.exists():
            _write(swap, memory if version == "v1" else "0")
    elif controller == "pids" and res.pids_limit is not None:
        _write(d / "pids.max", str(res.pids_limit))
    elif controller == "cpu" and res.cpus is not None:
        quota = max(1000, int(res.cpus * _CFS_PERIOD_US))
        if version == "v1":
            _write(d / "cpu.cfs_period_us", str(_CFS_PERIOD_US))
            _write(d / "cpu.cfs_quota_us", str(quota))
        else:
            _write(d / "cpu.max", f"{quota} {_CFS_PERIOD_US}")


def _owner(name: str) -> tuple[int, float | None, int | None] | None:
    """(pid, epoch start, start ticks) of a base folder's name (``-t<ticks>-`` now; an
    earlier version wrote the epoch second), None if it is not one."""
    try:
        pid_s, start_s, _ = name[len(_PREFIX) :].split("-", 2)
        if start_s.startswith("t"):
            return int(pid_s), None, int(start_s[1:])
        return int(pid_s), float(start_s), None
    except ValueError:
        return None


def reap_stale(*, kill: bool = False) -> list[Path]:
    """Remove the base folders of servers that are not running any more (blocking): those
    empty of processes, or with ``kill`` every one (what is left inside is SIGKILLed)."""
    removed: list[Path] = []
    try:
        own = _own_dirs()
    except OSError:
        return removed
    for d, _ in own.values():
        for base in d.glob(f"{_PREFIX}*"):
            owner = _owner(base.name)
            if owner is None:
                continue
            pid, started, ticks = owner
            if not owner_alive(pid, started, ticks=ticks) and _rmdir_tree(base, kill=kill):
                removed.append(base)
    return removed
