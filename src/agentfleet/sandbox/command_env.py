"""The environment sandbox commands run with (every backend), and host git's fixed identity."""

from __future__ import annotations

import os
import sys

__all__ = ["DEFAULT_PATH", "GIT_ENV", "command_env", "default_path"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

GIT_ENV = {
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
"""Git's identity, fixed dates and no system / global config: the baseline commit is the same
whoever makes it, and commands' own commits get the identity (without the dates)."""


def default_path() -> str:
    """The server's PATH with the real interpreter's folder first, so ``python3`` in a sandbox
    is this Python, not a version-manager shim (pyenv's adds ~0.1 s to every start)."""
    real_bin = os.path.dirname(os.path.realpath(sys.executable))  # reads links: off the loop
    parts = [real_bin, *(os.environ.get("PATH") or DEFAULT_PATH).split(os.pathsep)]
    return os.pathsep.join(dict.fromkeys(p for p in parts if p))


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
        **{k: v for k, v in GIT_ENV.items() if not k.endswith("_DATE")},
        **extra,
    }
