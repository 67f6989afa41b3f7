"""``agentfleet tasks check``: original tests, reference solution, reference speedup."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agentfleet.evaluation.evaluator import EvalConfig, Evaluator
from agentfleet.evaluation.schema import EvalRequest
from agentfleet.sandbox.base import CreateSandbox
from agentfleet.sandbox.process import ProcessBackend
from agentfleet.sandbox.service import SandboxService
from agentfleet.tasks import DEFAULT_SPLIT, Task
from agentfleet.tasks.defaults import (
    BASELINE_RANGE_S,
    DEFAULT_EVAL_REPEATS,
    MIN_REFERENCE_SPEEDUP,
)


def problems(
    row: Mapping[str, Any],
    *,
    min_speedup: float = MIN_REFERENCE_SPEEDUP,
    baseline_range: tuple[float, float] = BASELINE_RANGE_S,
) -> list[str]:
    """Why a checked task is not fit for the dataset (empty: it is)."""
    out = []
    if row["original_tests"] != "pass":
        out.append("original tests fail")
    if row["reference"] != "ok":
        out.append(f"reference {row['reference']}")
    elif row["speedup"] < min_speedup:
        out.append(f"reference {row['speedup']:.2f}x < {min_speedup:g}x")
    lo, hi = baseline_range
    if row["reference"] == "ok" and not lo <= row["baseline_s"] <= hi:
        out.append(f"baseline {row['baseline_s']:.2f} s outside {lo:g}-{hi:g} s")
    return out


def _read_patch(task: Task) -> str:
    return task.solution_patch  # reads a file: off the loop


async def check_tasks(
    tasks: Sequence[Task],
    *,
    repeats: int = DEFAULT_EVAL_REPEATS,
    split_of: Mapping[str, str] | None = None,
    min_speedup: float = MIN_REFERENCE_SPEEDUP,
    baseline_range: tuple[float, float] = BASELINE_RANGE_S,
    progress: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """Check tasks one at a time (timings must not fight for the cores), with the
    evaluation server's own measurement. ``split_of``: task id -> split (default test)."""
    rows = []
    roots = sorted({task.task_dir.parent for task in tasks})  # the datasets' folders
    async with SandboxService(ProcessBackend(), dataset_roots=roots) as sandboxes:
        # every round: a task's reference speedup is the figure asked for
        config = EvalConfig(repeats=repeats, early_stop_rounds=None)
        evaluator = Evaluator(sandboxes, config, dataset_roots=roots)
        for task in tasks:
            dataset = str(task.task_dir.parent)
            info = await sandboxes.create(CreateSandbox(task_id=task.id, dataset=dataset))
            try:
                res = await sandboxes.exec(info.sandbox_id, task.test_cmd, timeout=task.timeout_s)
            finally:
                await sandboxes.delete(info.sandbox_id)
            patch = await asyncio.to_thread(_read_patch, task)
            result = await evaluator.evaluate(
                EvalRequest(
                    exit_status="Submitted",
                    result=patch,
                    instance_id=task.id,
                    dataset_name=dataset,
                    split=(split_of or {}).get(task.id, DEFAULT_SPLIT),
                )
            )
            timing = result.info.get("timing", {})
            row: dict[str, Any] = {
                "task": task.id,
                "original_tests": "pass" if res.returncode == 0 else f"FAIL ({res.returncode})",
                "reference": str(result.info.get("status")),
                "baseline_s": float(timing.get("baseline_median_s", 0.0) or 0.0),
                "clock": str(timing.get("clock", "")),
                "speedup": result.speedup,
            }
            row["problems"] = problems(row, min_speedup=min_speedup, baseline_range=baseline_range)
            row["ok"] = not row["problems"]
            progress(
                f"{task.id}: tests {row['original_tests']}, reference {row['reference']} "
                f"{row['speedup']:.2f}x, baseline {row['baseline_s']:.2f} s"
            )
            rows.append(row)
    return rows
