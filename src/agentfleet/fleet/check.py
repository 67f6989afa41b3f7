"""``agentfleet tasks check``: original tests, reference solution, reference speedup."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from agentfleet.evaluation.evaluator import EvalConfig, Evaluator
from agentfleet.evaluation.schema import EvalRequest
from agentfleet.sandbox.base import CreateSandbox
from agentfleet.sandbox.process import ProcessBackend
from agentfleet.sandbox.service import SandboxService
from agentfleet.tasks import Task

MIN_REFERENCE_SPEEDUP = 1.5


async def check_tasks(
    tasks: Sequence[Task], *, repeats: int = 5, progress: Callable[[str], None] = lambda _: None
) -> list[dict[str, Any]]:
    """Check tasks one at a time (timings must not fight for the cores)."""
    rows = []
    async with SandboxService(ProcessBackend()) as sandboxes:
        evaluator = Evaluator(sandboxes, EvalConfig(repeats=repeats))
        for task in tasks:
            info = await sandboxes.create(CreateSandbox(task_id=task.id, dataset=task.dataset))
            try:
                res = await sandboxes.exec(info.sandbox_id, task.test_cmd, timeout=task.timeout_s)
            finally:
                await sandboxes.delete(info.sandbox_id)
            original_ok = res.returncode == 0
            result = await evaluator.evaluate(
                EvalRequest(
                    exit_status="Submitted",
                    result=task.solution_patch,
                    instance_id=task.id,
                    dataset_name=str(task.task_dir.parent),
                    split="test",
                )
            )
            timing = result.info.get("timing", {})
            row = {
                "task": task.id,
                "original_tests": "pass" if original_ok else f"FAIL ({res.returncode})",
                "reference": str(result.info.get("status")),
                "baseline_s": float(timing.get("baseline_median_s", 0.0) or 0.0),
                "speedup": result.speedup,
                "ok": original_ok
                and result.info.get("status") == "ok"
                and result.speedup >= MIN_REFERENCE_SPEEDUP,
            }
            progress(
                f"{task.id}: tests {row['original_tests']}, reference {row['reference']} "
                f"{row['speedup']:.2f}x"
            )
            rows.append(row)
    return rows
