"""The reference (gold) arm of an evaluation: its sandbox patched and rebuilt, or no arm at
all when the candidate's files are the gold's, byte for byte.

Then both arms would run the same program, and any gap between their timings is noise: on a
busy host, gso-mini's oracle (the gold patch resubmitted) failed GSO's "within 5% of the
gold" rule on some rows in some runs. Such a candidate is timed once and its rounds stand
for the gold's (``info["reference_is_candidate"]``), which also saves a third of the timing.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from agentfleet.evaluation import image_eval
from agentfleet.evaluation.patches import CHANGED_FILES, apply_patch, output_tail
from agentfleet.evaluation.speedup import Samples
from agentfleet.sandbox.base import SandboxError, Sandboxes
from agentfleet.tasks.task import Task

# The tree of the work folder as it stands (tracked and new files; ignored ones, __pycache__
# and *.pyc left out), through a scratch copy of the index: the sandbox's own is untouched.
_TREE_CMD = (
    'i=$(mktemp) && { cp "$(git rev-parse --git-path index)" "$i" 2>/dev/null || rm -f "$i"; } '
    f'&& GIT_INDEX_FILE="$i" git add -A {CHANGED_FILES} '
    '&& GIT_INDEX_FILE="$i" git write-tree; rc=$?; rm -f "$i"; exit $rc'
)

_TREE_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # sha1 or sha256 repositories


async def tree_id(sandboxes: Sandboxes, sandbox_id: str) -> str | None:
    """The git tree id of a sandbox's work folder; None when git cannot tell."""
    try:
        res = await sandboxes.exec(sandbox_id, _TREE_CMD, timeout=120)
    except SandboxError:
        return None
    last = (res.output.strip().splitlines() or [""])[-1].strip()  # after any git warning
    return last if res.returncode == 0 and _TREE_ID.fullmatch(last) else None


@dataclass
class Reference:
    sandbox: str | None = None  # the arm to time, if any
    is_candidate: bool = False  # the candidate's tree is the gold's: its rounds stand in


async def prepare_reference(
    sandboxes: Sandboxes,
    sandbox: Awaitable[str],
    patch: str,
    task: Task,
    build_timeout: float,
    candidate_tree: str | None,
    info: dict[str, Any],
) -> Reference:
    """Apply the gold ``patch`` in its sandbox and rebuild; trouble drops the arm (said in
    ``info["reference_error"]``), never the evaluation."""
    try:
        sid = await sandbox
        ok, _, output = await apply_patch(sandboxes, sid, patch)
        if (
            ok
            and candidate_tree is not None
            and not image_eval.protected_edits(patch, task.test_files)
        ):
            if await tree_id(sandboxes, sid) == candidate_tree:
                info["reference_is_candidate"] = True
                return Reference(is_candidate=True)
        if ok:
            built = await image_eval.rebuild(sandboxes, sid, task, build_timeout)
            if built is not None and (built.timed_out or built.returncode != 0):
                ok, output = False, "rebuild failed: " + built.output
    except SandboxError as exc:
        info["reference_error"] = f"reference sandbox failed: {exc}"
        return Reference()
    if not ok:
        info["reference_error"] = "reference patch did not apply: " + output_tail(output, 1000)
        return Reference()
    return Reference(sandbox=sid)


def candidate_as_reference(samples: Samples) -> None:
    """The candidate's rounds as the reference's too (the same program)."""
    samples.wall_s["reference"] = list(samples.wall_s["candidate"])
    samples.cpu_s["reference"] = list(samples.cpu_s["candidate"])
    if "candidate" in samples.metrics:
        samples.metrics["reference"] = [dict(r) for r in samples.metrics["candidate"]]
