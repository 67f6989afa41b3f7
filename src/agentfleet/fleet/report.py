"""Terminal output of a run: the per-task table and the summary line."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from agentfleet.fleet.runner import TaskOutcome


def summary(outcomes: Sequence[TaskOutcome], wall_s: float) -> dict[str, Any]:
    n = len(outcomes)
    correct = [o for o in outcomes if o.info.get("status") == "ok" and o.speedup > 0]
    speedups = [o.speedup for o in correct]
    geo = math.exp(sum(math.log(s) for s in speedups) / len(speedups)) if speedups else 0.0
    return {
        "tasks": n,
        "submitted": sum(o.exit_status == "Submitted" for o in outcomes),
        "correct": len(correct),
        "mean_reward": sum(o.reward for o in outcomes) / n if n else 0.0,
        "geomean_speedup": geo,
        "fast_1.0": sum(s > 1.0 for s in speedups) / n if n else 0.0,
        "fast_1.5": sum(s > 1.5 for s in speedups) / n if n else 0.0,
        "fast_2.0": sum(s > 2.0 for s in speedups) / n if n else 0.0,
        "cost": sum(o.cost for o in outcomes),
        "wall_s": wall_s,
        "tasks_per_s": n / wall_s if wall_s > 0 else 0.0,
    }


def summary_line(s: dict[str, Any]) -> str:
    return (
        f"{s['tasks']} tasks, {s['correct']} correct: mean reward {s['mean_reward']:.3f}, "
        f"geo-mean speedup {s['geomean_speedup']:.2f}x (over correct), "
        f"fast_1.5 {s['fast_1.5']:.0%}, {s['tasks_per_s']:.3f} tasks/s in {s['wall_s']:.1f} s"
    )


def print_results(outcomes: Sequence[TaskOutcome], s: dict[str, Any], console: Console) -> None:
    table = Table(title="agentfleet run")
    for col in ("instance", "exit status", "eval", "reward", "speedup", "steps", "seconds"):
        table.add_column(
            col, justify="left" if col in {"instance", "exit status", "eval"} else "right"
        )
    for o in outcomes:
        status = str(o.info.get("status", o.error[:40] or "-"))
        table.add_row(
            o.instance_id,
            o.exit_status,
            status,
            f"{o.reward:.3f}",
            f"{o.speedup:.2f}x",
            str(o.steps),
            f"{o.duration_s:.1f}",
        )
    console.print(table)
    console.print(summary_line(s))
