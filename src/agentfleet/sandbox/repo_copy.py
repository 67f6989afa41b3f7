"""The copy of a task's repository into a sandbox's workdir, taking nothing from the host
beyond it.

* No ``.git`` (folder or ``gitdir:`` file, at any depth): the sandbox's repository is made
  fresh, so no config, hook or filter of the task's reaches host git
  (:mod:`agentfleet.sandbox.host_git`).
* Symlinks are copied as links, and only when they stay inside the repository (relative,
  resolving inside it); one pointing out (``/etc``, ``../../secret``) refuses the copy.
  The repository folder itself must not be a symlink.
* Regular files and folders only: a FIFO, socket or device in the task refuses the copy.

Errors are :class:`~agentfleet.sandbox.base.SandboxError` 422 naming the repo-relative
path, never a host path. Blocking: call from a thread.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from agentfleet.sandbox.base import SandboxError

__all__ = ["SKIPPED_NAMES", "copy_repo"]

SKIPPED_NAMES = frozenset({".git"})


class UnsafeRepo(SandboxError):
    status = 422


def _link_stays_inside(real_src: Path, rel: str, target: str) -> bool:
    """Does the link at ``rel`` (relative to ``real_src``) with ``target`` resolve inside?"""
    if os.path.isabs(target):
        return False  # would name a host path (or the task's original place) in the copy
    lexical = os.path.normpath(os.path.join(os.path.dirname(rel), target))
    if lexical == ".." or lexical.startswith("../"):
        return False
    # through other links too, as the copy will resolve it
    return Path(os.path.realpath(real_src / rel)).is_relative_to(real_src)


def copy_repo(source: Path, dest: Path) -> None:
    """Copy the repository ``source`` to the new folder ``dest`` (see the module)."""
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        raise SandboxError("the task's repository is missing", 500) from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeRepo("the task's repository is a symlink: refused")
    if not stat.S_ISDIR(st.st_mode):
        raise SandboxError("the task's repository is not a folder", 500)
    real_src = Path(os.path.realpath(source))
    dest.mkdir()
    folders: list[str] = [""]  # repo-relative folders still to copy
    done: list[str] = []
    while folders:
        rel_dir = folders.pop()
        with os.scandir(real_src / rel_dir) as entries:
            for entry in entries:
                if entry.name in SKIPPED_NAMES:
                    continue
                rel = os.path.join(rel_dir, entry.name)
                target = dest / rel
                if entry.is_symlink():
                    link = os.readlink(entry.path)
                    if not _link_stays_inside(real_src, rel, link):
                        raise UnsafeRepo(
                            f"the task's repository has a symlink pointing outside it: {rel!r}"
                        )
                    os.symlink(link, target)
                elif entry.is_dir(follow_symlinks=False):
                    target.mkdir()
                    folders.append(rel)
                elif entry.is_file(follow_symlinks=False):
                    shutil.copy2(entry.path, target, follow_symlinks=False)
                else:
                    raise UnsafeRepo(
                        f"the task's repository holds a special file (FIFO, socket, device): "
                        f"{rel!r}"
                    )
        done.append(rel_dir)
    for rel_dir in reversed(done):  # modes and times last: a read-only folder filled first
        shutil.copystat(real_src / rel_dir, dest / rel_dir, follow_symlinks=False)
