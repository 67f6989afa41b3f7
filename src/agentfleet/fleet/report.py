"""Terminal output of a run: the per-task table and the summary line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from rich.console import Console
from rich.table import Table

from agentfleet.evaluation.pass_rules import benchmark_summary
from agentfleet.evaluation.reward import summarize
from agentfleet.fleet.outcome import TaskOutcome


def outcome_of(record: dict[str, Any]) -> TaskOutcome:
    """A results.jsonl record as a :class:`TaskOutcome` (extra keys such as ``state`` are
    dropped)."""
    names = {f.name for f in fields(TaskOutcome)}
    kw = {k: v for k, v in record.items() if k in names}
    kw.setdefault("instance_id", "?")
    kw.setdefault("exit_status", "?")
    return TaskOutcome(**kw)


def summary(outcomes: Sequence[TaskOutcome], wall_s: float) -> dict[str, Any]:
    """The run's figures: the evaluation summary (:func:`summarize`) plus cost and pace."""
    figures = summarize([(o.reward, o.speedup, o.info) for o in outcomes])
    n = figures["n"]
    return {
        "tasks": n,
        "submitted": sum(o.exit_status == "Submitted" for o in outcomes),
        "correct": figures["n_correct"],
        "mean_reward": figures["mean_reward"],
        "geomean_speedup": figures["geomean_speedup"] or 0.0,
        **{f"fast_{p}": figures[f"fast_{p}"] for p in ("1.0", "1.5", "2.0")},
        "cost": sum(o.cost for o in outcomes),
        "wall_s": wall_s,
        "tasks_per_s": n / wall_s if wall_s > 0 else 0.0,
        # real benchmarks: each one's own pass rule and speedups (evaluation/pass_rules.py)
        "benchmarks": benchmark_summary([o.info for o in outcomes]),
    }


def summary_line(s: dict[str, Any]) -> str:
    line = (
        f"{s['tasks']} tasks, {s['correct']} correct: mean reward {s['mean_reward']:.3f}, "
        f"geo-mean speedup {s['geomean_speedup']:.2f}x (over correct), "
        f"fast_1.5 {s['fast_1.5']:.0%}, {s['tasks_per_s']:.3f} tasks/s in {s['wall_s']:.1f} s"
    )
    return "\n".join([line, *benchmark_lines(s.get("benchmarks") or {})])


def _x(value: Any) -> str:
    return f"{value:.2f}x" if isinstance(value, int | float) else "-"


def benchmark_lines(benchmarks: dict[str, Any]) -> list[str]:
    """One line per real benchmark: its own pass rule's rate and the mean speedups."""
    lines = []
    for name, b in benchmarks.items():
        line = (
            f"{name}: {b['passed']}/{b['n']} pass its rule ({b['pass_rate']:.0%}), "
            f"speedup over base {_x(b.get('geomean_speedup_base'))}, "
            f"relative to gold {_x(b.get('geomean_speedup_gold'))} (geo-means)"
        )
        if b.get("hm_speedup_ratio") is not None:
            line += f", SWE-fficiency score {b['hm_speedup_ratio']:.3f} (harmonic mean)"
        lines.append(line)
    return lines


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
