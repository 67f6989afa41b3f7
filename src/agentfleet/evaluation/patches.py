"""Patches of an evaluation: the submission's (given, or the diff of the agent's sandbox),
checked against the task's pristine repository at submit time, and applied in a sandbox."""

from __future__ import annotations

import os
import shlex

from agentfleet.sandbox.base import SandboxError, Sandboxes
from agentfleet.sandbox.command_env import DEFAULT_PATH
from agentfleet.sandbox.host_git import patch_applies
from agentfleet.tasks.task import Task

PATCH_PATH = ".git/agentfleet.patch"  # inside the workdir, but never part of a diff
# What counts as a sandbox's change (for its diff, and for comparing its tree with the
# gold's): every file but ignored ones and Python's caches.
CHANGED_FILES = "-- . ':(exclude)*__pycache__*' ':(exclude)*.pyc'"
OUTPUT_TAIL = 4000


class BadSubmission(ValueError):
    """The request carries no usable patch (no ``result``, no usable ``container_id``).
    The server answers 422."""

    status = 422


def output_tail(text: str, n: int = OUTPUT_TAIL) -> str:
    return text if len(text) <= n else "..." + text[-n:]


async def check_patch_applies(task: Task, patch: str) -> None:
    """BadSubmission unless ``patch`` applies to the task's pristine repository, as
    :meth:`Evaluator._apply` would apply it (read-only, on the host, with no git config,
    hook or filter of the task's: :func:`~agentfleet.sandbox.host_git.patch_applies`)."""
    path = os.environ.get("PATH") or DEFAULT_PATH
    problem = await patch_applies(task.repo_dir, patch, path=path)
    if problem is not None:
        raise BadSubmission(f"patch does not apply: {problem}")


async def sandbox_diff(sandboxes: Sandboxes, sandbox_id: str) -> str:
    """Everything changed in a sandbox since its baseline (its first commit; an image task's:
    the image's HEAD): the agent's commits and new files included, binary-safe,
    ``__pycache__``/``*.pyc`` excluded. The index is restored after. Raises
    :class:`BadSubmission` when the diff cannot be taken."""
    cmd = (
        # an image task's baseline is the image's HEAD (refs/agentfleet/base), else the root
        "base=$(git rev-parse -q --verify refs/agentfleet/base || "
        "git rev-list --max-parents=0 HEAD | tail -n 1) && "
        f"git add -A {CHANGED_FILES} && "
        f'git diff --cached --binary --no-color --no-ext-diff "$base" > {PATCH_PATH}; '
        "rc=$?; git reset -q; exit $rc"
    )
    res = await sandboxes.exec(sandbox_id, cmd, timeout=120)
    if res.returncode != 0:
        raise BadSubmission(f"could not diff sandbox {sandbox_id!r}: {output_tail(res.output)}")
    data = await sandboxes.read_file(sandbox_id, PATCH_PATH)
    await sandboxes.exec(sandbox_id, f"rm -f {PATCH_PATH}", timeout=30)
    return data.decode("utf-8", "surrogateescape")


def count_patch_lines(patch: str) -> int:
    """Added plus removed lines of a unified diff (file headers not counted)."""
    n = 0
    for line in patch.splitlines():
        if line.startswith(("+++", "---")):
            continue
        if line.startswith(("+", "-")):
            n += 1
    return n


async def apply_patch(sandboxes: Sandboxes, sandbox_id: str, patch: str) -> tuple[bool, str, str]:
    """Apply with ``git apply``, falling back to ``patch --fuzz``; (ok, method, output)."""
    await sandboxes.write_file(sandbox_id, PATCH_PATH, patch.encode("utf-8", "surrogateescape"))
    res = await sandboxes.exec(
        sandbox_id, f"git apply --whitespace=nowarn {PATCH_PATH}", timeout=120
    )
    if res.returncode == 0:
        return True, "git apply", res.output
    first = res.output
    res = await sandboxes.exec(
        sandbox_id,
        f"command -v patch >/dev/null || exit 127; "
        f"patch --batch --fuzz=5 -p1 --no-backup-if-mismatch -i {PATCH_PATH}",
        timeout=120,
    )
    if res.returncode == 0:
        return True, "patch --fuzz=5", res.output
    return False, "", f"git apply:\n{first}\npatch:\n{res.output}"


async def restore_test_files(sandboxes: Sandboxes, sandbox_id: str, task: Task) -> None:
    """Put every path of ``task.test_files`` back as in the first commit: edits undone,
    deleted files restored, files added under a listed folder removed."""
    paths = [p.strip().rstrip("/") for p in task.test_files if p.strip().rstrip("/")]
    if not paths:
        return
    for p in paths:
        if p.startswith("/") or ".." in p.split("/") or p in (".", ""):
            raise ValueError(f"task {task.id}: bad test path {p!r}")
    parts = ["base=$(git rev-list --max-parents=0 HEAD | tail -n 1) || exit 1"]
    for p in paths:
        q = shlex.quote(p)
        parts.append(
            f'rm -rf -- {q}; if git cat-file -e "$base:"{q} 2>/dev/null; '
            f'then git checkout -q "$base" -- {q} || exit 1; fi'
        )
    res = await sandboxes.exec(sandbox_id, "\n".join(parts), timeout=120)
    if res.returncode != 0:
        raise SandboxError(f"could not restore test files: {output_tail(res.output, 1000)}")


__all__ = [
    "CHANGED_FILES",
    "OUTPUT_TAIL",
    "PATCH_PATH",
    "BadSubmission",
    "apply_patch",
    "check_patch_applies",
    "count_patch_lines",
    "restore_test_files",
    "sandbox_diff",
]
