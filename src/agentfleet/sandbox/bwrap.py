"""bubblewrap's command line for a sandbox command: only what commands need, no secrets.

A confined command sees, read-only: ``/usr`` and the top-level ``/bin``, ``/sbin``,
``/lib*`` (as the symlinks they are on merged-/usr systems), ``/etc`` with its secrets
masked (:data:`SECRET_FILES` covered by /dev/null on a nodev mount: unreadable;
:data:`SECRET_DIRS` as empty folders), and the Python installation that runs the server
when it lives outside ``/usr`` (so ``python3`` works); read-write: its own workdir (at the
same path as on the host) and its own ``/tmp``; plus a fresh ``/dev`` and ``/proc``, its own
PID namespace and no network (unless asked). Nothing else of the host: no home folders, no
other sandbox, no job database, no task's ``solution.patch`` (the bundled datasets are
masked even when they sit under a bound path).

bwrap itself runs with the server's fixed environment (:data:`BWRAP_ENV`): the request's
``env`` is set inside the sandbox only (``--clearenv`` then ``--setenv``), so a variable such
as ``LD_PRELOAD`` never acts on the host.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

from agentfleet.sandbox.command_env import DEFAULT_PATH

__all__ = ["BWRAP_ENV", "SECRET_DIRS", "SECRET_FILES", "command_argv", "system_binds"]

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SECRET_FILES = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/security/opasswd",
)
SECRET_DIRS = ("/etc/ssh", "/etc/ssl/private", "/etc/sudoers.d")
BWRAP_ENV = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
"""The environment of the bwrap process itself: fixed, never the client's."""


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _bundled_datasets() -> str:
    import agentfleet.tasks

    return os.path.realpath(Path(agentfleet.tasks.__file__).parent / "data")


def system_binds(extra_ro: Iterable[str] = (), hide: Iterable[str] = ()) -> list[str]:
    """bwrap arguments for the host part of every confined command (reads the disk: call it
    once, off the event loop). ``extra_ro``: more folders to show read-only; ``hide``:
    folders to mask if they fall under a shown one."""
    args: list[str] = []
    shown: list[str] = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
            shown.append(d)
    args += ["--ro-bind", "/etc", "/etc"]
    shown.append("/etc")
    for f in SECRET_FILES:
        if os.path.lexists(f):
            args += ["--ro-bind", "/dev/null", f]
    for d in SECRET_DIRS:
        if os.path.isdir(d) and not os.path.islink(d):
            args += ["--tmpfs", d]
    prefix = os.path.realpath(sys.base_prefix)  # python3 in the sandbox is this Python
    for p in (prefix, *(os.path.realpath(x) for x in extra_ro)):
        if os.path.isdir(p) and not _under(p, shown):
            args += ["--ro-bind", p, p]
            shown.append(p)
    for h in (_bundled_datasets(), *(os.path.realpath(x) for x in hide)):
        if os.path.isdir(h) and _under(h, shown):
            args += ["--tmpfs", h]
    return [*args, "--dev", "/dev", "--proc", "/proc"]


def command_argv(
    bwrap: str,
    system: list[str],
    *,
    tmp: str,
    work: str,
    cwd: str,
    env: dict[str, str],
    network: bool,
    command: str,
) -> list[str]:
    """``bwrap ... bash -c command``: ``env`` inside only, ``tmp`` as /tmp, ``work`` at its
    own path, the host part ``system`` (:func:`system_binds`)."""
    argv = [bwrap, "--clearenv"]
    for name, value in env.items():
        argv += ["--setenv", name, value]
    argv += [*system, "--bind", tmp, "/tmp"]
    parts = Path(work).parts
    if parts[:2] == ("/", "tmp") and len(parts) > 3:
        # the workdir's mount point would be made inside the sandbox's own /tmp (a host
        # folder the command controls): make it on a tmpfs instead
        argv += ["--tmpfs", os.path.join("/tmp", parts[2])]
    argv += ["--bind", work, work, "--chdir", cwd]
    argv += ["--unshare-pid", "--die-with-parent"]
    if os.geteuid() == 0:  # bwrap keeps a root caller's capabilities: the command gets none
        argv += ["--cap-drop", "ALL"]
    if not network:
        argv.append("--unshare-net")
    return [*argv, "bash", "-c", command]
