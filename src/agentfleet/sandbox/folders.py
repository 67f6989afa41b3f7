"""Sandbox folders on this machine: what every backend keeps on the host, and their reaping.

Layout, one folder per sandbox under ``root`` (default ``$TMPDIR/agentfleet-sandboxes``)::

    <root>/<sandbox_id>/.agentfleet-sandbox.json   marker + metadata (owner instance, pid, ttl)
    <root>/<sandbox_id>/work/                      the workdir (a git repo, base commit "base")
    <root>/<sandbox_id>/tmp/                       the sandbox's /tmp (TMPDIR), kept across execs
    <root>/<sandbox_id>/pgids/<pgid>               one empty file per running command's group
                                                   (written in batches by the exec guard)

The marker and the group records sit outside the workdir, so commands can neither read nor
forge them.

:class:`SandboxFolders` owns one backend instance's folders: it makes them (a copy of the
task's repository (:mod:`agentfleet.sandbox.repo_copy`: no ``.git``, no symlink out), ``git
init`` and the baseline commit ``base``, caches git-ignored), reads and writes files inside the
workdir (confined: :mod:`agentfleet.sandbox.confined`) and deletes them. Host git never reads
the task's own config, attributes, hooks or filters (:mod:`agentfleet.sandbox.host_git`).

Reaping: a starting :class:`SandboxFolders` removes the folders of servers that are gone (the
marker's owner pid is not running, names a newer process, or is a zombie), after killing what
their commands left running: the process groups recorded under ``pgids/`` and every process
whose environment names the sandbox (``AGENTFLEET_SANDBOX``). ``agentfleet sandbox gc`` does the
same for every folder under the root (:func:`gc_all`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from agentfleet.sandbox import confined
from agentfleet.sandbox.base import CreateSandbox, SandboxError, SandboxNotFound
from agentfleet.sandbox.command_env import default_path
from agentfleet.sandbox.host_git import run_host_git
from agentfleet.sandbox.repo_copy import copy_repo

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = [
    "CACHE_EXCLUDES",
    "MARKER",
    "MAX_FILE_BYTES",
    "PGIDS_DIR",
    "SANDBOX_ENV",
    "SandboxFolder",
    "SandboxFolders",
    "default_root",
    "gc_all",
    "kill_group",
    "kill_leftovers",
    "owner_alive",
    "process_start_ticks",
    "process_start_time",
    "reap_orphans",
    "rmtree",
]

MARKER = ".agentfleet-sandbox.json"
PGIDS_DIR = "pgids"
SANDBOX_ENV = "AGENTFLEET_SANDBOX"  # in every command's environment: the sandbox's folder
_PID_REUSE_SLACK_S = 2.0  # process start times are only this precise (boot time in seconds)
_UNREADABLE_MARKER_AGE_S = 60.0  # a marker no one could parse for this long is garbage
MAX_FILE_BYTES = 50 * 1024 * 1024
CACHE_EXCLUDES = (".cache/", "__pycache__/", "*.pyc", ".pytest_cache/", ".local/", ".config/")


def default_root() -> Path:
    """Where sandbox folders go by default: ``$TMPDIR/agentfleet-sandboxes``."""
    return Path(os.environ.get("TMPDIR") or "/tmp") / "agentfleet-sandboxes"


# --------------------------------------------------------------------------- processes
def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), None if there is no such process.
    For people; :func:`process_start_ticks` names the process."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (``/proc/PID/stat`` field 22;
    None: no such process, or no ``/proc``). Unlike an epoch time (psutil adds the boot time,
    which moves whenever the wall clock is stepped), it names one process exactly."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def owner_alive(pid: int, started: float | None = None, *, ticks: int | None = None) -> bool:
    """Is the owner process ``pid`` still running, and still the one that started at
    ``ticks`` (:func:`process_start_ticks`), else at ``started`` (epoch seconds, as
    :func:`process_start_time` gave, within a slack; None: do not check)?

    A zombie (exited, not yet waited for by its parent) is not alive: it serves nothing.
    """
    try:
        proc = psutil.Process(pid)
        running_since = proc.create_time()
        zombie = proc.status() == psutil.STATUS_ZOMBIE
    except (psutil.Error, OSError):
        return False
    if zombie:
        return False
    if ticks is not None and (now := process_start_ticks(pid)) is not None:
        return now == ticks
    return started is None or abs(running_since - started) < _PID_REUSE_SLACK_S


def kill_group(pgid: int) -> None:
    """SIGKILL process group ``pgid`` if it still exists (never group 0 or 1)."""
    if pgid <= 1:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _marked_processes() -> dict[str, list[psutil.Process]]:
    """Processes by the sandbox folder their environment names (``AGENTFLEET_SANDBOX``)."""
    found: dict[str, list[psutil.Process]] = {}
    me = os.getpid()
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        try:
            value = p.environ().get(SANDBOX_ENV)
        except (psutil.Error, OSError):
            continue
        if value:
            found.setdefault(value, []).append(p)
    return found


def _names_a_newer_process(pid: int, ticks: str, recorded: float) -> bool:
    """Is ``pid`` now a process other than the one recorded (by its start ``ticks``, else
    started after the record's time ``recorded``)? False if no process has it."""
    if ticks.isdigit():
        now = process_start_ticks(pid)
        return now is not None and now != int(ticks)
    started = process_start_time(pid)
    return started is not None and started > recorded + _PID_REUSE_SLACK_S


def kill_leftovers(folder: Path, marked: dict[str, list[psutil.Process]] | None = None) -> int:
    """SIGKILL what commands of the sandbox in ``folder`` left running; return how many
    groups / processes were signalled. For sandboxes no live server owns."""
    if marked is None:
        marked = _marked_processes()
    hit = 0
    own_group = os.getpgrp()
    with contextlib.suppress(OSError):
        for record in (folder / PGIDS_DIR).iterdir():
            try:
                pgid = int(record.name)
                recorded = record.stat().st_mtime
                ticks = record.read_text().strip()  # the leader's start (empty: unknown)
            except (ValueError, OSError):
                continue
            if pgid == own_group or _names_a_newer_process(pgid, ticks, recorded):
                continue  # the pid names a newer process now: not ours
            kill_group(pgid)
            hit += 1
    for proc in marked.get(str(folder), []):
        with contextlib.suppress(psutil.Error):
            proc.kill()  # psutil checks the pid still names the process it saw
            hit += 1
    return hit


# --------------------------------------------------------------------------- folders
def rmtree(path: Path) -> None:
    """rm -rf, also through directories the agent made read-only."""
    if not (path.exists() or path.is_symlink()):
        return
    shutil.rmtree(path, ignore_errors=True)
    if path.exists() and not path.is_symlink():
        for dirpath, dirnames, _ in os.walk(path):
            for d in (dirpath, *(os.path.join(dirpath, n) for n in dirnames)):
                if not os.path.islink(d):
                    with contextlib.suppress(OSError):
                        os.chmod(d, 0o700)
        shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        log.warning("could not remove sandbox folder %s completely", path)


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _marker_owner_alive(meta: dict[str, Any]) -> bool:
    pid, started, ticks = meta.get("pid"), meta.get("pid_started"), meta.get("pid_start_ticks")
    if not isinstance(pid, int):
        return False
    return owner_alive(
        pid,
        started if isinstance(started, int | float) else None,
        ticks=ticks if isinstance(ticks, int) else None,
    )


def _sandbox_folders(root: Path) -> list[Path]:
    """The folders under ``root`` that hold the marker file (never through a symlink)."""
    return [
        child
        for child in sorted(root.iterdir())
        if child.is_dir() and not child.is_symlink() and (child / MARKER).is_file()
    ]


def _reap_folders(folders: list[Path]) -> None:
    """Kill the leftovers of these sandbox folders, then remove them."""
    if not folders:
        return
    marked = _marked_processes()
    for folder in folders:
        kill_leftovers(folder, marked)
    for folder in folders:
        rmtree(folder)


def gc_all(root: Path | str | None = None) -> list[str]:
    """Remove every agentfleet sandbox folder under ``root`` (any owner); return their ids.

    For ``agentfleet sandbox gc``: only folders holding the marker file are touched; the
    commands still running in them are killed first (live servers' sandboxes go too).
    """
    base = Path(root) if root is not None else default_root()
    if not base.is_dir():
        return []
    folders = _sandbox_folders(base.resolve())
    _reap_folders(folders)
    return [f.name for f in folders]


def reap_orphans(root: Path, instance_id: str) -> list[str]:
    """Remove sandbox folders whose owner server (another instance) is no longer running,
    killing what their commands left running."""
    if not root.is_dir():
        return []
    orphans: list[Path] = []
    for child in _sandbox_folders(root.resolve()):
        meta = _read_marker(child)
        if meta is None:
            # a marker being written right now by a live server, or garbage: judge by age
            with contextlib.suppress(OSError):
                if time.time() - (child / MARKER).stat().st_mtime > _UNREADABLE_MARKER_AGE_S:
                    orphans.append(child)
            continue
        if meta.get("instance") == instance_id or _marker_owner_alive(meta):
            continue
        orphans.append(child)
    _reap_folders(orphans)
    return [f.name for f in orphans]


async def _thread_to_end(fn: Callable[..., T], *args: Any) -> T:
    """``to_thread`` that, if cancelled, still waits for the thread before re-raising (so
    cleanup never races with the work it undoes)."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait({fut})
        raise


@dataclass
class SandboxFolder:
    """One sandbox's folder (``dir``), its workdir and /tmp, and its running command groups."""

    sandbox_id: str
    dir: Path
    work: Path
    tmp: Path
    created_at: float
    expires_at: float
    pgids: set[int] = field(default_factory=set)
    deleting: bool = False


class _FolderTaken(SandboxError):
    status = 409


class SandboxFolders:
    """The sandbox folders of one backend instance (see the module's docstring).

    Args:
        root: folder holding the sandboxes (default ``$TMPDIR/agentfleet-sandboxes``).
        path: ``PATH`` of host git (default: the server's own ``PATH``).
        max_file_bytes: size cap of :meth:`write_file` / :meth:`read_file` (413 beyond).
    """

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        path: str | None = None,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.path = path or ""  # resolved at start() (default_path reads links)
        self.max_file_bytes = max_file_bytes
        self.instance_id = uuid.uuid4().hex
        self._folders: dict[str, SandboxFolder] = {}
        self._started = False
        self.pid_started: float | None = None  # this process's start time, once started
        self.pid_start_ticks: int | None = None  # the same in ticks since boot (its identity)

    async def start(self) -> None:
        """Make ``root`` (resolved from now on) and reap the folders of dead servers."""
        if self._started:
            return
        self._started = True
        if not self.path:
            self.path = await asyncio.to_thread(default_path)
        self.root = await asyncio.to_thread(self._prepare_root)
        self.pid_started = await asyncio.to_thread(process_start_time, os.getpid())
        self.pid_start_ticks = await asyncio.to_thread(process_start_ticks, os.getpid())
        removed = await asyncio.to_thread(reap_orphans, self.root, self.instance_id)
        if removed:
            log.info("removed %d orphaned sandbox folders under %s", len(removed), self.root)

    def _prepare_root(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root.resolve()

    async def aclose(self) -> None:
        """Delete every folder made here (killing the command groups still running)."""

        async def delete(sandbox_id: str) -> None:
            with contextlib.suppress(SandboxError):
                await self.delete(sandbox_id)

        await asyncio.gather(*(delete(s) for s in list(self._folders)))

    def sandbox_ids(self) -> list[str]:
        return list(self._folders)

    def get(self, sandbox_id: str) -> SandboxFolder:
        folder = self._folders.get(sandbox_id)
        if folder is None:
            raise SandboxNotFound(f"no sandbox {sandbox_id!r}")
        return folder

    # create / delete -------------------------------------------------------------------
    async def create(
        self, sandbox_id: str, source_dir: Path | None, req: CreateSandbox
    ) -> SandboxFolder:
        """Make the folder: a copy of ``source_dir`` (None: empty) committed as ``base``."""
        if not self._started:
            await self.start()
        if sandbox_id in self._folders:
            raise SandboxError(f"sandbox {sandbox_id} already exists", 409)
        now = time.time()
        path = self.root / sandbox_id
        sb = SandboxFolder(sandbox_id, path, path / "work", path / "tmp", now, now + req.ttl_s)
        meta = {
            "sandbox_id": sandbox_id,
            "instance": self.instance_id,
            "pid": os.getpid(),
            "pid_started": self.pid_started,
            "pid_start_ticks": self.pid_start_ticks,
            "created": now,
            "expires": sb.expires_at,
            "task_id": req.task_id,
            "dataset": req.dataset if req.task_id else None,
            "run": req.run,
        }
        self._folders[sandbox_id] = sb
        try:
            await _thread_to_end(self._make_folder, sb, source_dir, meta)
            await self._git(sb.work, "init", "-q")
            await self._git(sb.work, "add", "-A")
            await self._git(sb.work, "commit", "-q", "--allow-empty", "--no-verify", "-m", "base")
            # after the base commit: keep caches the commands leave (HOME is the workdir)
            # out of `git status` / `git add -A`
            await asyncio.to_thread(self._exclude_caches, sb.work)
        except BaseException as e:
            self._folders.pop(sandbox_id, None)
            if not isinstance(e, _FolderTaken):  # never remove another server's sandbox
                await asyncio.shield(asyncio.to_thread(rmtree, path))
            raise
        return sb

    def _make_folder(
        self, sb: SandboxFolder, source_dir: Path | None, meta: dict[str, Any]
    ) -> None:
        try:
            # the owner's only: no other local user reaches what a command left there (a
            # setuid program made by a container running as root)
            sb.dir.mkdir(mode=0o700, parents=False, exist_ok=False)
        except FileExistsError:
            raise _FolderTaken(f"sandbox {sb.sandbox_id} exists already ({sb.dir})") from None
        (sb.dir / MARKER).write_text(json.dumps(meta, indent=1))
        sb.tmp.mkdir()
        (sb.dir / PGIDS_DIR).mkdir()
        if source_dir is None:
            sb.work.mkdir()
        else:
            copy_repo(source_dir, sb.work)

    @staticmethod
    def _exclude_caches(work: Path) -> None:
        exclude = work / ".git" / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with exclude.open("a") as f:
            f.write("\n# agentfleet\n" + "\n".join(CACHE_EXCLUDES) + "\n")

    async def _git(self, cwd: Path, *args: str) -> None:
        returncode, out = await run_host_git(cwd, *args, path=self.path)
        if returncode != 0:
            raise SandboxError(
                f"git {' '.join(args)} failed ({returncode}): {out.decode(errors='replace')}"
            )

    async def delete(self, sandbox_id: str) -> None:
        """Kill the sandbox's running command groups, then remove its folder."""
        sb = self.get(sandbox_id)
        sb.deleting = True
        self._folders.pop(sandbox_id, None)
        for pgid in list(sb.pgids):
            kill_group(pgid)
        await asyncio.shield(asyncio.to_thread(rmtree, sb.dir))

    # files -----------------------------------------------------------------------------
    async def resolve_cwd(self, sb: SandboxFolder, cwd: str) -> Path:
        """The folder ``cwd`` names inside the workdir (relative to it, or absolute)."""
        return await asyncio.to_thread(confined.resolve_cwd, sb.work, cwd)

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        sb = self.get(sandbox_id)
        return await asyncio.to_thread(confined.read_file, sb.work, path, self.max_file_bytes)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        sb = self.get(sandbox_id)
        if len(data) > self.max_file_bytes:
            raise SandboxError(
                f"{len(data)} bytes is over the {self.max_file_bytes} bytes file cap", 413
            )
        await asyncio.to_thread(confined.write_file, sb.work, path, data)
