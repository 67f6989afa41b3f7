"""Confined file access: paths inside a sandbox's workdir, never outside it.

A path (relative to the workdir, or absolute inside it) is resolved with symlinks followed and
refused (:class:`~agentfleet.sandbox.base.PathOutsideSandbox`) if it leaves the workdir; files
are then opened component by component with ``O_NOFOLLOW``, so a symlink swapped in meanwhile
cannot redirect a read or a write. The last component is opened with ``O_NONBLOCK`` (and
without ``O_TRUNC``) and checked with ``fstat`` before any byte moves: a FIFO, socket or device
is refused (400) at once instead of blocking a server thread forever. Blocking: call from a
thread.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from agentfleet.sandbox.base import PathOutsideSandbox, SandboxError

__all__ = ["confine", "read_file", "resolve_cwd", "write_file"]


def confine(work: Path, path: str) -> tuple[Path, Path]:
    """(real workdir, resolved path inside it); symlinks are followed, escapes refused."""
    real_work = Path(os.path.realpath(work))
    if "\x00" in path:
        raise PathOutsideSandbox(f"invalid path {path!r}")
    raw = Path(path) if path else Path(".")
    if raw.is_absolute():
        # an absolute path may name the workdir by its real or its given spelling
        candidate = raw
    else:
        candidate = real_work / raw
    try:
        resolved = Path(os.path.realpath(candidate))
    except UnicodeEncodeError:  # a lone surrogate no file name can hold
        raise PathOutsideSandbox(f"invalid path {path!r}") from None
    if resolved != real_work and real_work not in resolved.parents:
        raise PathOutsideSandbox(f"path {path!r} is outside the sandbox workdir {work}")
    return real_work, resolved


def resolve_cwd(work: Path, cwd: str) -> Path:
    """The folder ``cwd`` names inside the workdir (400 if it is not a folder)."""
    _, resolved = confine(work, cwd)
    if not resolved.is_dir():
        raise SandboxError(f"cwd {cwd!r} is not a directory in the sandbox", 400)
    return resolved


def _open(work: Path, path: str, *, write: bool) -> int:
    """Open a file inside the workdir without following any symlink on the way.

    The path is resolved first (clear errors for escapes), then walked component by
    component with ``O_NOFOLLOW``, so a symlink swapped in meanwhile cannot redirect it.
    """
    real_work, resolved = confine(work, path)
    parts = resolved.relative_to(real_work).parts
    if not parts:
        raise SandboxError(f"path {path!r} is the workdir itself, not a file", 400)
    dir_fd = os.open(real_work, os.O_RDONLY | os.O_DIRECTORY)
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
                raise _os_error(path, e) from None
            os.close(dir_fd)
            dir_fd = nxt
        # O_NONBLOCK: opening a FIFO never waits for its other end (nor a device's carrier);
        # truncation waits for the regular-file check
        flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
        flags |= (os.O_WRONLY | os.O_CREAT) if write else os.O_RDONLY
        try:
            fd = os.open(parts[-1], flags, 0o644, dir_fd=dir_fd)
        except FileNotFoundError:
            raise SandboxError(f"no such file in the sandbox: {path!r}", 404) from None
        except OSError as e:
            raise _os_error(path, e) from None
    finally:
        os.close(dir_fd)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise SandboxError(f"path {path!r} is a directory", 400)
        if not stat.S_ISREG(mode):
            raise SandboxError(
                f"path {path!r} is not a regular file (a FIFO, socket or device)", 400
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _os_error(path: str, e: OSError) -> SandboxError:
    if e.errno == errno.ELOOP:
        return PathOutsideSandbox(f"path {path!r} changed to a symlink")
    if e.errno in (errno.ENXIO, errno.EOPNOTSUPP):  # a FIFO with no reader, a socket
        return SandboxError(f"path {path!r} is not a regular file (a FIFO, socket or device)", 400)
    if e.errno in (errno.EISDIR, errno.ENOTDIR):
        return SandboxError(f"path {path!r}: {e.strerror}", 400)
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return SandboxError(f"path {path!r}: {e.strerror}", 403)
    return SandboxError(f"path {path!r}: {e.strerror}", 500)


def read_file(work: Path, path: str, max_bytes: int) -> bytes:
    """The bytes of a regular file inside the workdir (413 over ``max_bytes``)."""
    fd = _open(work, path, write=False)  # a regular file
    try:
        st = os.fstat(fd)
        over = SandboxError(f"file {path!r} is over the {max_bytes} bytes cap", 413)
        if st.st_size > max_bytes:
            raise over
        chunks, got = [], 0
        while chunk := os.read(fd, 1 << 20):  # bounded too: the file may grow meanwhile
            chunks.append(chunk)
            got += len(chunk)
            if got > max_bytes:
                raise over
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_file(work: Path, path: str, data: bytes) -> None:
    """Write ``data`` to a file inside the workdir, making missing folders on the way."""
    fd = _open(work, path, write=True)  # a regular file
    try:
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)
