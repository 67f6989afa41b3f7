"""Git on the host (the baseline commit of a sandbox, the evaluator's ``git apply --check``),
never reading a task's own git config, attributes, hooks or filters.

Every host git call runs with :func:`host_git_env`: built from nothing (no variable of the
server's own leaks in), no system, global or XDG config, no system attributes, hooks path and
attributes / excludes files ``/dev/null``, no fsmonitor, no templates, no protocol allowed,
its settings given through ``GIT_CONFIG_COUNT`` (above any config file). A filter, diff or
merge driver needs a config entry to run a command; with a fresh ``.git`` (the copy of a task
never takes one, see :mod:`agentfleet.sandbox.repo_copy`) or :func:`detached_git_dir` (no
repository of the task is ever opened), no entry can come from the task, so a
``.gitattributes`` naming ``filter=x`` runs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from agentfleet.sandbox.command_env import GIT_ENV

__all__ = [
    "HOST_GIT_CONFIG",
    "detached_git_dir",
    "host_git_env",
    "patch_applies",
    "run_captured",
    "run_host_git",
]

HOST_GIT_CONFIG = {
    "core.hooksPath": "/dev/null",
    "core.attributesFile": "/dev/null",
    "core.excludesFile": "/dev/null",
    "core.fsmonitor": "false",
    "core.pager": "cat",
    "commit.gpgSign": "false",
    "tag.gpgSign": "false",
    "init.defaultBranch": "main",
    "init.templateDir": "",
    "protocol.allow": "never",
    "submodule.recurse": "false",
    "diff.external": "",
}
"""Git settings of every host git call (command-line level: they win over any config file)."""


def host_git_env(path: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a host git call (``PATH`` ``path``) plus ``extra``."""
    env = {
        "PATH": path,
        "HOME": "/nonexistent",
        "XDG_CONFIG_HOME": "/nonexistent",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        **GIT_ENV,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_ATTR_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_COUNT": str(len(HOST_GIT_CONFIG)),
    }
    for i, (key, value) in enumerate(HOST_GIT_CONFIG.items()):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return {**env, **(extra or {})}


async def run_captured(
    argv: list[str], cwd: Path, env: dict[str, str], stdin: bytes | None = None
) -> tuple[int, bytes]:
    """Run ``argv`` in ``cwd`` with exactly ``env``; (exit status, stdout+stderr). Cancelled,
    the process is killed and waited for before the cancellation goes on."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await proc.communicate(stdin)
    except BaseException:
        # a process left running would go on writing into a folder about to be removed
        if proc.returncode is None:
            proc.kill()
        await asyncio.shield(proc.wait())
        raise
    assert proc.returncode is not None
    return proc.returncode, out


async def run_host_git(
    cwd: Path,
    *args: str,
    path: str,
    stdin: bytes | None = None,
    extra_env: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """``git *args`` in ``cwd`` with :func:`host_git_env` (``PATH`` ``path``, plus
    ``extra_env``) through :func:`run_captured`."""
    return await run_captured(["git", *args], cwd, host_git_env(path, extra_env), stdin)


def _make_git_dir() -> str:
    folder = tempfile.mkdtemp(prefix="agentfleet-gitdir-")
    try:
        os.mkdir(os.path.join(folder, "objects"))
        os.mkdir(os.path.join(folder, "refs"))
        with open(os.path.join(folder, "HEAD"), "w") as f:
            f.write("ref: refs/heads/main\n")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


@contextlib.asynccontextmanager
async def detached_git_dir(work_tree: Path) -> AsyncIterator[dict[str, str]]:
    """``GIT_DIR`` / ``GIT_WORK_TREE`` for read-only git commands on a folder that may hold its
    own ``.git`` (a task's repository): git then uses an empty repository made here (removed
    on exit) and never opens the folder's own."""
    folder = await asyncio.to_thread(_make_git_dir)
    try:
        yield {"GIT_DIR": folder, "GIT_WORK_TREE": str(work_tree)}
    finally:
        await asyncio.shield(asyncio.to_thread(shutil.rmtree, folder, True))


async def patch_applies(repo: Path, patch: str, *, path: str) -> str | None:
    """None if ``patch`` applies to the folder ``repo`` by ``git apply --check``, or else by
    ``patch --dry-run --fuzz=5``; otherwise git's message (the clearer one). Read-only; git
    runs on :func:`detached_git_dir`, ``patch`` with a fixed environment (``PATCH_GET=0``:
    never a checkout from version control)."""
    data = patch.encode("utf-8", "surrogateescape")
    outputs: list[bytes] = []
    async with detached_git_dir(repo) as git_dirs:
        attempts = (
            (["git", "apply", "--check", "--whitespace=nowarn", "-"], host_git_env(path, git_dirs)),
            (
                ["patch", "--dry-run", "--batch", "--fuzz=5", "-p1", "--silent"],
                {"PATH": path, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PATCH_GET": "0"},
            ),
        )
        for argv, env in attempts:
            try:
                returncode, output = await run_captured(argv, repo, env, data)
            except FileNotFoundError:  # no such program here: this attempt does not take it
                outputs.append(f"{argv[0]}: command not found".encode())
                continue
            if returncode == 0:
                return None
            outputs.append(output)
    return outputs[0].decode(errors="replace").strip()[-1000:]
