"""A run folder's results: reading ``results.jsonl`` (tolerating a crash's half line),
the done / failed state of a result, and what a resumed run still has to do. Where the
files are: :class:`~agentfleet.fleet.rundir.RunDir`.

All functions here are synchronous file I/O: call them from a thread
(``asyncio.to_thread``) when an event loop is running.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentfleet.fleet.rundir import RunDir

log = logging.getLogger("agentfleet.fleet")

DONE = "done"
FAILED = "failed"


def result_state(record: dict[str, Any]) -> str:
    """``"failed"`` when the agent or its evaluation broke (``error`` set, exit status
    ``Error``, or evaluation status ``error``), else ``"done"``.

    A wrong or slow solution is *done*: it got a score. Failed means no trustworthy score.
    """
    info = record.get("info") or {}
    if record.get("error") or record.get("exit_status") == "Error":
        return FAILED
    if isinstance(info, dict) and info.get("status") == "error":
        return FAILED
    return DONE


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON object line of a JSONL file, in order. A line that does not
    parse (the half-written last line of a crashed run) is skipped with a warning."""
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d: ignoring an incomplete line (%d chars)", path, n, len(line))
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def latest_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The last result line of each task (a rerun appends; the newest line wins), with
    ``state`` filled in for lines written before the field existed."""
    latest: dict[str, dict[str, Any]] = {}
    for rec in read_records(RunDir(run_dir).results):
        iid = rec.get("instance_id")
        if not isinstance(iid, str):
            continue
        rec.setdefault("state", result_state(rec))
        latest.pop(iid, None)  # keep the order of the newest lines
        latest[iid] = rec
    return latest


def spent_usd(run_dir: Path) -> float:
    """What the run's models cost so far: every result line's ``cost`` (a rerun's and a
    superseded line's too: that money was spent)."""
    total = 0.0
    for rec in read_records(RunDir(run_dir).results):
        cost = rec.get("cost")
        if isinstance(cost, int | float) and math.isfinite(cost) and cost > 0:
            total += float(cost)
    return total


def repair_tail(path: Path) -> bool:
    """Make ``path`` end with a complete line before more lines are appended.

    A crash can leave a half-written last line. If that tail is valid JSON only the
    newline is missing and it is added; otherwise the partial tail is cut off (nothing
    before it is touched). Returns whether anything changed."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return False
    cut = data.rfind(b"\n") + 1  # 0 when the only line is partial
    tail = data[cut:]
    try:
        json.loads(tail)
    except ValueError:
        log.warning("%s: dropping an incomplete last line (%d bytes)", path, len(tail))
        with path.open("r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
        return True
    with path.open("ab") as f:
        f.write(b"\n")
    return True


@dataclass
class ResumePlan:
    """Which of a run's tasks a resumed run does again."""

    done: list[str] = field(default_factory=list)  # complete: skipped
    failed: list[str] = field(default_factory=list)  # failed: skipped unless rerun_failed
    todo: list[str] = field(default_factory=list)  # to run now (no result, or rerun failed)

    @property
    def skipped(self) -> list[str]:
        return [t for t in [*self.done, *self.failed] if t not in set(self.todo)]


def plan_resume(run_dir: Path, task_ids: list[str], *, rerun_failed: bool = False) -> ResumePlan:
    latest = latest_results(run_dir)
    plan = ResumePlan()
    for tid in task_ids:
        rec = latest.get(tid)
        if rec is None:
            plan.todo.append(tid)
        elif rec["state"] == FAILED:
            plan.failed.append(tid)
            if rerun_failed:
                plan.todo.append(tid)
        else:
            plan.done.append(tid)
    return plan


def read_trajectory(run_dir: Path, instance_id: str) -> dict[str, Any]:
    path = RunDir(run_dir).trajectory(instance_id)
    if not path.is_file():
        raise FileNotFoundError(f"no trajectory for {instance_id!r} in {run_dir}")
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data
