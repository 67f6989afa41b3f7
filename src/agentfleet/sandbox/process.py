"""ProcessBackend: sandboxes as folders on this machine, commands as local process groups.

Layout, one folder per sandbox under ``root`` (default ``$TMPDIR/agentfleet-sandboxes``)::

    <root>/<sandbox_id>/.agentfleet-sandbox.json   marker + metadata (owner instance, pid, ttl)
    <root>/<sandbox_id>/work/                      the workdir (a git repo, base commit "base")
    <root>/<sandbox_id>/tmp/                       the sandbox's /tmp (TMPDIR), kept across execs
    <root>/<sandbox_id>/pgids/<pgid>               one empty file per running command's group

The marker and the group records sit outside the workdir, so commands can neither read nor
forge them.

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
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import stat
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from agentfleet.sandbox.base import (
    DEFAULT_EXEC_TIMEOUT,
    CreateSandbox,
    ExecRequest,
    ExecResult,
    PathOutsideSandbox,
    SandboxError,
    SandboxNotFound,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

MARKER = ".agentfleet-sandbox.json"
PGIDS_DIR = "pgids"
SANDBOX_ENV = "AGENTFLEET_SANDBOX"  # in every command's environment: the sandbox's folder
_PID_REUSE_SLACK_S = 2.0  # process start times are only this precise (boot time in seconds)
MAX_FILE_BYTES = 50 * 1024 * 1024
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


_REAL_PYTHON_BIN = os.path.dirname(os.path.realpath(sys.executable))


def default_path() -> str:
    """The server's PATH with the real interpreter's folder first, so ``python3`` in a sandbox
    is this Python, not a version-manager shim (pyenv's adds ~0.1 s to every start)."""
    parts = [_REAL_PYTHON_BIN, *(os.environ.get("PATH") or DEFAULT_PATH).split(os.pathsep)]
    return os.pathsep.join(dict.fromkeys(p for p in parts if p))


_GIT_ENV = {
    "GIT_AUTHOR_NAME": "agentfleet",
    "GIT_AUTHOR_EMAIL": "agentfleet@localhost",
    "GIT_COMMITTER_NAME": "agentfleet",
    "GIT_COMMITTER_EMAIL": "agentfleet@localhost",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
}
_DRAIN_AFTER_KILL_S = 5.0
CACHE_EXCLUDES = (".cache/", "__pycache__/", "*.pyc", ".pytest_cache/", ".local/", ".config/")


def default_root() -> Path:
    return Path(os.environ.get("TMPDIR") or "/tmp") / "agentfleet-sandboxes"


# --------------------------------------------------------------------------- output capture
class OutputCapture:
    """Keeps the head and the tail of a stream in bounded memory.

    ``limit`` counts characters of the final text: at most ``limit // 2`` from the start and
    ``limit - limit // 2`` from the end, with a marker between them when something was dropped.
    Bytes are buffered (4 bytes per kept character at most, UTF-8's worst case), so memory stays
    bounded whatever the command prints.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.head_chars = self.limit // 2
        self.tail_chars = self.limit - self.head_chars
        self._head_cap = 4 * self.head_chars
        self._tail_cap = 4 * self.tail_chars
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self._dropped = False  # bytes went neither to head nor tail

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self._head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if not data:
            return
        if len(data) >= self._tail_cap:
            if self.tail or len(data) > self._tail_cap:
                self._dropped = True
            keep = data[len(data) - self._tail_cap :] if self._tail_cap else b""
            self.tail = bytearray(keep)
            return
        self.tail += data
        excess = len(self.tail) - self._tail_cap
        if excess > 0:
            del self.tail[:excess]
            self._dropped = True

    def result(self) -> tuple[str, bool]:
        """The kept text and whether anything was left out."""
        if not self._dropped:
            text = (self.head + self.tail).decode("utf-8", "replace")
            if len(text) <= self.limit:
                return text, False
            head, tail = text[: self.head_chars], text[len(text) - self.tail_chars :]
        else:
            head = self.head.decode("utf-8", "replace")[: self.head_chars]
            tail_text = self.tail.decode("utf-8", "replace")
            tail = tail_text[len(tail_text) - self.tail_chars :] if self.tail_chars else ""
        omitted = max(0, self.total - len(head.encode()) - len(tail.encode()))
        marker = f"\n... [agentfleet: output truncated, {omitted} bytes omitted] ...\n"
        return head + marker + tail, True


class _PipeProtocol(asyncio.Protocol):
    def __init__(self, capture: OutputCapture, done: asyncio.Future[None]) -> None:
        self.capture = capture
        self.done = done

    def data_received(self, data: bytes) -> None:
        self.capture.feed(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def command_env(path: str, home: str, tmpdir: str, extra: dict[str, str]) -> dict[str, str]:
    """The environment of a sandbox command: minimal and predictable, then the caller's."""
    return {
        "PATH": path,
        "HOME": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": tmpdir,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PAGER": "cat",
        "GIT_PAGER": "cat",
        "TERM": "dumb",
        **{k: v for k, v in _GIT_ENV.items() if not k.endswith("_DATE")},
        **extra,
    }


class _Fd:
    """The minimal file object ``connect_read_pipe`` wants: it closes the fd when done.

    Some loops (uvloop) close the fd themselves before calling ``close()``; the number may
    then already belong to another file, so it is closed only if it is still our pipe.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        st = os.fstat(fd)
        self._identity = (st.st_dev, st.st_ino)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            st = os.fstat(fd)
        except OSError:  # already closed by the loop
            return
        if (st.st_dev, st.st_ino) == self._identity:
            os.close(fd)


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


def _killpg(pgid: int) -> None:
    if pgid <= 1:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _thread_to_end(fn: Callable[..., T], *args: Any) -> T:
    """``to_thread`` that, if cancelled, still waits for the thread before re-raising (so
    cleanup never races with the work it undoes)."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait({fut})
        raise


def _touch(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):  # the sandbox is being deleted
        path.touch()


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- sandboxes
@dataclass
class _Sandbox:
    sandbox_id: str
    dir: Path
    work: Path
    tmp: Path
    created_at: float
    expires_at: float
    pgids: set[int] = field(default_factory=set)
    deleting: bool = False


def _process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def _owner_alive(meta: dict[str, Any]) -> bool:
    pid = meta.get("pid")
    if not isinstance(pid, int):
        return False
    started = _process_start_time(pid)
    if started is None:
        return False
    want = meta.get("pid_started")
    return not isinstance(want, int | float) or abs(started - want) < 2.0


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _rmtree(path: Path) -> None:
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
            except (ValueError, OSError):
                continue
            started = _process_start_time(pgid)
            if pgid == own_group or (
                started is not None and started > recorded + _PID_REUSE_SLACK_S
            ):
                continue  # the pid names a newer process now: not ours
            _killpg(pgid)
            hit += 1
    for proc in marked.get(str(folder), []):
        with contextlib.suppress(psutil.Error):
            proc.kill()  # psutil checks the pid still names the process it saw
            hit += 1
    return hit


def _reap_folders(folders: list[Path]) -> None:
    """Kill the leftovers of these sandbox folders, then remove them."""
    if not folders:
        return
    marked = _marked_processes()
    for folder in folders:
        kill_leftovers(folder, marked)
    for folder in folders:
        _rmtree(folder)


def gc_all(root: Path | str | None = None) -> list[str]:
    """Remove every agentfleet sandbox folder under ``root`` (any owner); return their ids.

    For ``agentfleet sandbox gc``: only folders holding the marker file are touched; the
    commands still running in them are killed first (live servers' sandboxes go too).
    """
    base = Path(root) if root is not None else default_root()
    if not base.is_dir():
        return []
    base = base.resolve()
    folders = [
        child
        for child in sorted(base.iterdir())
        if child.is_dir() and not child.is_symlink() and (child / MARKER).is_file()
    ]
    _reap_folders(folders)
    return [f.name for f in folders]


def reap_orphans(root: Path, instance_id: str) -> list[str]:
    """Remove sandbox folders whose owner server (another instance) is no longer running,
    killing what their commands left running."""
    if not root.is_dir():
        return []
    root = root.resolve()
    orphans: list[Path] = []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.is_symlink() or not (child / MARKER).is_file():
            continue
        meta = _read_marker(child)
        if meta is None:
            # a marker being written right now by a live server, or garbage: judge by age
            with contextlib.suppress(OSError):
                if time.time() - (child / MARKER).stat().st_mtime > 60:
                    orphans.append(child)
            continue
        if meta.get("instance") == instance_id or _owner_alive(meta):
            continue
        orphans.append(child)
    _reap_folders(orphans)
    return [f.name for f in orphans]


class _FolderTaken(SandboxError):
    status = 409


class ProcessBackend:
    """Sandboxes as local folders; commands as process groups, under bubblewrap when possible.

    Args:
        root: folder holding the sandboxes (default ``$TMPDIR/agentfleet-sandboxes``).
        confine: ``True`` requires bubblewrap, ``False`` never uses it, ``None`` uses it if
            ``bwrap`` is installed and works here (checked once in :meth:`start`).
        network: let confined commands use the network (default: no network).
        default_timeout: command timeout when a request names none.
        path: ``PATH`` given to commands (default: the server's own ``PATH``).
        max_file_bytes: size cap of :meth:`write_file` / :meth:`read_file` (413 beyond).
    """

    name = "process"

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        confine: bool | None = None,
        network: bool = False,
        default_timeout: float = DEFAULT_EXEC_TIMEOUT,
        path: str | None = None,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.confine_option = confine
        self.network = network
        self.default_timeout = default_timeout
        self.path = path or default_path()
        self.max_file_bytes = max_file_bytes
        self.instance_id = uuid.uuid4().hex
        self.confined = False
        self.bwrap: str | None = None
        self.setpriv: str | None = None  # unconfined: gives commands a parent-death signal
        self._sandboxes: dict[str, _Sandbox] = {}
        self._started = False
        self._pid_started: float | None = None

    # lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.root = await asyncio.to_thread(self._prepare_root)
        self._pid_started = await asyncio.to_thread(_process_start_time, os.getpid())
        if self.confine_option is not False:
            self.bwrap = await asyncio.to_thread(shutil.which, "bwrap")
            self.confined = self.bwrap is not None and await self._bwrap_works()
            if self.confine_option and not self.confined:
                raise SandboxError("confine=True but bubblewrap (bwrap) does not work here")
            if not self.confined:
                log.warning("bubblewrap unavailable: sandbox commands run unconfined")
        if not self.confined:
            self.setpriv = await self._setpriv_works()
        removed = await asyncio.to_thread(reap_orphans, self.root, self.instance_id)
        if removed:
            log.info("removed %d orphaned sandbox folders under %s", len(removed), self.root)

    def _prepare_root(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root.resolve()

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

        async def delete(sandbox_id: str) -> None:
            with contextlib.suppress(SandboxError):
                await self.delete(sandbox_id)

        await asyncio.gather(*(delete(s) for s in list(self._sandboxes)))

    def sandbox_ids(self) -> list[str]:
        return list(self._sandboxes)

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self._get(sandbox_id).dir

    # create / delete -------------------------------------------------------------------
    async def create(self, sandbox_id: str, source_dir: Path | None, req: CreateSandbox) -> str:
        if not self._started:
            await self.start()
        if sandbox_id in self._sandboxes:
            raise SandboxError(f"sandbox {sandbox_id} already exists", 409)
        now = time.time()
        folder = self.root / sandbox_id
        sb = _Sandbox(sandbox_id, folder, folder / "work", folder / "tmp", now, now + req.ttl_s)
        meta = {
            "sandbox_id": sandbox_id,
            "instance": self.instance_id,
            "pid": os.getpid(),
            "pid_started": self._pid_started,
            "created": now,
            "expires": sb.expires_at,
            "task_id": req.task_id,
            "dataset": req.dataset if req.task_id else None,
            "run": req.run,
        }
        self._sandboxes[sandbox_id] = sb
        try:
            await _thread_to_end(self._make_folder, sb, source_dir, meta)
            await self._git(sb.work, "init", "-q")
            await self._git(sb.work, "add", "-A")
            await self._git(sb.work, "commit", "-q", "--allow-empty", "--no-verify", "-m", "base")
            # after the base commit: keep caches the commands leave (HOME is the workdir)
            # out of `git status` / `git add -A`
            await asyncio.to_thread(self._exclude_caches, sb.work)
        except BaseException as e:
            self._sandboxes.pop(sandbox_id, None)
            if not isinstance(e, _FolderTaken):  # never remove another server's sandbox
                await asyncio.shield(asyncio.to_thread(_rmtree, folder))
            raise
        return str(sb.work)

    def _make_folder(self, sb: _Sandbox, source_dir: Path | None, meta: dict[str, Any]) -> None:
        try:
            sb.dir.mkdir(parents=False, exist_ok=False)
        except FileExistsError:
            raise _FolderTaken(f"sandbox {sb.sandbox_id} exists already ({sb.dir})") from None
        (sb.dir / MARKER).write_text(json.dumps(meta, indent=1))
        sb.tmp.mkdir()
        (sb.dir / PGIDS_DIR).mkdir()
        if source_dir is None:
            sb.work.mkdir()
        else:
            if not source_dir.is_dir():
                raise SandboxError(f"task repository {source_dir} is missing", 500)
            shutil.copytree(source_dir, sb.work, symlinks=True)

    @staticmethod
    def _exclude_caches(work: Path) -> None:
        exclude = work / ".git" / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with exclude.open("a") as f:
            f.write("\n# agentfleet\n" + "\n".join(CACHE_EXCLUDES) + "\n")

    async def _git(self, cwd: Path, *args: str) -> None:
        env = {"PATH": self.path, "HOME": str(cwd), "LANG": "C.UTF-8", **_GIT_ENV}
        proc = await asyncio.create_subprocess_exec(
            "git",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "core.hooksPath=/dev/null",
            *args,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await proc.communicate()
        except BaseException:
            # cancelled (Ctrl-C during create): the folder is removed next, and a git left
            # running would write into it again after that, leaving a folder with no marker
            # that no reaper claims
            if proc.returncode is None:
                proc.kill()
            await asyncio.shield(proc.wait())
            raise
        if proc.returncode != 0:
            raise SandboxError(
                f"git {' '.join(args)} failed ({proc.returncode}): {out.decode(errors='replace')}"
            )

    async def delete(self, sandbox_id: str) -> None:
        sb = self._get(sandbox_id)
        sb.deleting = True
        self._sandboxes.pop(sandbox_id, None)
        for pgid in list(sb.pgids):
            _killpg(pgid)
        await asyncio.shield(asyncio.to_thread(_rmtree, sb.dir))

    def _get(self, sandbox_id: str) -> _Sandbox:
        sb = self._sandboxes.get(sandbox_id)
        if sb is None:
            raise SandboxNotFound(f"no sandbox {sandbox_id!r}")
        return sb

    # paths -----------------------------------------------------------------------------
    @staticmethod
    def _confine(sb: _Sandbox, path: str) -> tuple[Path, Path]:
        """(workdir, resolved path inside it); symlinks are followed, escapes refused."""
        work = Path(os.path.realpath(sb.work))
        if "\x00" in path:
            raise PathOutsideSandbox(f"invalid path {path!r}")
        raw = Path(path) if path else Path(".")
        if raw.is_absolute():
            # an absolute path may name the workdir by its real or its given spelling
            candidate = raw
        else:
            candidate = work / raw
        resolved = Path(os.path.realpath(candidate))
        if resolved != work and work not in resolved.parents:
            raise PathOutsideSandbox(f"path {path!r} is outside the sandbox workdir {sb.work}")
        return work, resolved

    def _resolve_cwd(self, sb: _Sandbox, cwd: str) -> Path:
        _, resolved = self._confine(sb, cwd)
        if not resolved.is_dir():
            raise SandboxError(f"cwd {cwd!r} is not a directory in the sandbox", 400)
        return resolved

    def _open(self, sb: _Sandbox, path: str, *, write: bool) -> int:
        """Open a file inside the workdir without following any symlink on the way.

        The path is resolved first (clear errors for escapes), then walked component by
        component with ``O_NOFOLLOW``, so a symlink swapped in meanwhile cannot redirect it.
        """
        work, resolved = self._confine(sb, path)
        parts = resolved.relative_to(work).parts
        if not parts:
            raise SandboxError(f"path {path!r} is the workdir itself, not a file", 400)
        dir_fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts[:-1]:
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                except FileNotFoundError:
                    if not write:
                        raise SandboxError(f"no such file in the sandbox: {path!r}", 404) from None
                    os.mkdir(part, 0o755, dir_fd=dir_fd)
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                except OSError as e:
                    raise self._os_error(path, e) from None
                os.close(dir_fd)
                dir_fd = nxt
            flags = os.O_NOFOLLOW | os.O_CLOEXEC
            flags |= (os.O_WRONLY | os.O_CREAT | os.O_TRUNC) if write else os.O_RDONLY
            try:
                return os.open(parts[-1], flags, 0o644, dir_fd=dir_fd)
            except FileNotFoundError:
                raise SandboxError(f"no such file in the sandbox: {path!r}", 404) from None
            except OSError as e:
                raise self._os_error(path, e) from None
        finally:
            os.close(dir_fd)

    @staticmethod
    def _os_error(path: str, e: OSError) -> SandboxError:
        if e.errno == errno.ELOOP:
            return PathOutsideSandbox(f"path {path!r} changed to a symlink")
        if e.errno in (errno.EISDIR, errno.ENOTDIR):
            return SandboxError(f"path {path!r}: {e.strerror}", 400)
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return SandboxError(f"path {path!r}: {e.strerror}", 403)
        return SandboxError(f"path {path!r}: {e.strerror}", 500)

    def _read_sync(self, sb: _Sandbox, path: str) -> bytes:
        fd = self._open(sb, path, write=False)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise SandboxError(f"path {path!r} is a directory", 400)
            if not stat.S_ISREG(st.st_mode):
                raise SandboxError(f"path {path!r} is not a regular file", 400)
            if st.st_size > self.max_file_bytes:
                raise SandboxError(
                    f"file {path!r} is {st.st_size} bytes, over the {self.max_file_bytes} cap", 413
                )
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _write_sync(self, sb: _Sandbox, path: str, data: bytes) -> None:
        fd = self._open(sb, path, write=True)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        finally:
            os.close(fd)

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        sb = self._get(sandbox_id)
        return await asyncio.to_thread(self._read_sync, sb, path)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        sb = self._get(sandbox_id)
        if len(data) > self.max_file_bytes:
            raise SandboxError(
                f"{len(data)} bytes is over the {self.max_file_bytes} bytes file cap", 413
            )
        await asyncio.to_thread(self._write_sync, sb, path, data)

    # exec ------------------------------------------------------------------------------
    def _env(self, sb: _Sandbox, extra: dict[str, str]) -> dict[str, str]:
        tmp = "/tmp" if self.confined else str(sb.tmp)
        env = command_env(self.path, str(sb.work), tmp, extra)
        env[SANDBOX_ENV] = str(sb.dir)  # how orphan reaping finds what escaped the group
        return env

    def _argv(self, sb: _Sandbox, cwd: Path, command: str) -> list[str]:
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

    async def exec(self, sandbox_id: str, req: ExecRequest, output_limit: int) -> ExecResult:
        sb = self._get(sandbox_id)
        cwd = await asyncio.to_thread(self._resolve_cwd, sb, req.cwd)
        timeout = req.timeout or self.default_timeout
        loop = asyncio.get_running_loop()
        capture = OutputCapture(output_limit)
        started = time.monotonic()

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
        pgid = proc.pid  # start_new_session: the leader's pid is the group id
        if sb.deleting:
            _killpg(pgid)
        sb.pgids.add(pgid)
        record = sb.dir / PGIDS_DIR / str(pgid)

        done: asyncio.Future[None] = loop.create_future()
        os.set_blocking(r, False)
        pipe = _Fd(r)
        try:
            transport, _ = await loop.connect_read_pipe(lambda: _PipeProtocol(capture, done), pipe)
        except BaseException:
            pipe.close()
            _killpg(pgid)
            sb.pgids.discard(pgid)
            raise
        timed_out = False
        try:
            # for the next server's reaper, should this one be SIGKILLed
            await _thread_to_end(_touch, record)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                timed_out = True
        finally:
            # The leader has exited, timed out or we were cancelled: nothing of the group
            # may survive the exec (also kills `cmd &` children left behind).
            _killpg(pgid)
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
                await asyncio.shield(asyncio.to_thread(_unlink, record))

        output, truncated = capture.result()
        returncode = proc.returncode if proc.returncode is not None else -9
        if timed_out:
            returncode = 124
            output += f"\n[agentfleet: command timed out after {timeout:g} s and was killed]\n"
        return ExecResult(
            output=output,
            returncode=returncode,
            truncated=truncated,
            timed_out=timed_out,
            duration_s=round(time.monotonic() - started, 4),
        )
