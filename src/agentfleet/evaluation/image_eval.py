"""The steps an evaluation adds for a real benchmark's task (GSO, SWE-Perf, SWE-fficiency):
protected test paths, the native rebuild after a patch, the workload's own time report,
and the benchmark's verdict (:mod:`~agentfleet.evaluation.pass_rules`).

A task is *scored by its benchmark* when ``task.benchmark`` is not ``perf-lite``; the
rest of the evaluation (sandbox per arm, apply, tests, same output, interleaved rounds)
is the evaluator's usual one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agentfleet.evaluation.config import EvalConfig
from agentfleet.evaluation.pass_rules import benchmark_verdict, failed_verdict
from agentfleet.evaluation.rounds import keep
from agentfleet.evaluation.speedup import Samples, speedup_stats
from agentfleet.evaluation.workload_parsers import parse_workload_output
from agentfleet.sandbox.base import ExecResult, Sandboxes
from agentfleet.tasks.task import Task

__all__ = [
    "MetricParser",
    "gold_speedup",
    "metric_parser",
    "output_filter",
    "patched_paths",
    "protected_edits",
    "rebuild",
    "scored_by_benchmark",
    "verdict",
]

MetricParser = Callable[[str, float], dict[str, float]]  # (stdout, wall_s) -> seconds

# Lines left out of the output comparison: the times a workload prints change every run.
_TIMING_LINES: dict[str, str] = {
    "gso": r"^\s*Execution time:",
    "mean": r"^\s*(Mean|Std Dev):",
    "pytest": r"\d(\.\d+)?s\b",  # durations and the "N passed in 0.70s" line
}

_DIFF_HEADER = re.compile(r"^diff --git a/(\S+) b/(\S+)$")
_FILE_LINE = re.compile(r"^(?:---|\+\+\+) (?:[ab]/)?(\S+)")


def scored_by_benchmark(task: Task) -> bool:
    """Whether ``task`` is scored by a real benchmark's rule (gold arm, verdict)."""
    return task.benchmark != "perf-lite"


def patched_paths(patch: str) -> set[str]:
    """Every path a unified diff touches (both sides of a rename; ``/dev/null`` left out)."""
    paths: set[str] = set()
    for line in patch.splitlines():
        m = _DIFF_HEADER.match(line) or _FILE_LINE.match(line)
        if m:
            paths.update(p for p in m.groups() if p and p != "/dev/null")
    return paths


def protected_edits(patch: str, test_files: Sequence[str]) -> list[str]:
    """The paths of ``patch`` that are, or lie under, one of ``test_files``; sorted."""
    roots = [p.strip().strip("/") for p in test_files if p.strip().strip("/")]
    return sorted(
        path
        for path in patched_paths(patch)
        if any(path == r or path.startswith(r + "/") for r in roots)
    )


async def rebuild(
    sandboxes: Sandboxes, sandbox_id: str, task: Task, timeout: float
) -> ExecResult | None:
    """Run the task's ``rebuild_cmd`` (None when it has none)."""
    if not task.rebuild_cmd.strip():
        return None
    return await sandboxes.exec(sandbox_id, task.rebuild_cmd, timeout=timeout)


def _names(task: Task) -> list[str]:
    """SWE-Perf's timed tests (``efficiency_test``: a list, or its JSON text)."""
    raw: Any = task.benchmark_fields.get("efficiency_test") or []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = [raw]
    return [str(n) for n in raw] if isinstance(raw, list) else []


def metric_parser(task: Task) -> MetricParser | None:
    """How a timed run's output becomes seconds per metric; None for ``wall`` (the
    evaluator's own whole-process time is the only metric)."""
    if task.workload_parser == "wall":
        return None
    parser, names = task.workload_parser, _names(task) if task.workload_parser == "pytest" else []

    def parse(stdout: str, wall_s: float) -> dict[str, float]:
        return parse_workload_output(parser, stdout, wall_s=wall_s, names=names).times

    return parse


def output_filter(task: Task) -> str | None:
    """Regex of the output lines the correctness check ignores (None: compare all)."""
    return _TIMING_LINES.get(task.workload_parser)


def gold_speedup(task: Task) -> float | None:
    """The gold speedup a dataset recorded (SWE-fficiency's ``speedup``), if any."""
    try:
        value = float(task.benchmark_fields.get("speedup"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def _arm_seconds(
    metrics: Mapping[str, Sequence[Mapping[str, float]]],
    wall: Mapping[str, Sequence[float]],
    dropped: Sequence[int],
) -> dict[str, dict[str, list[float]]]:
    """Per arm (the reference as ``gold``) and metric, the kept rounds' seconds."""
    arms: dict[str, dict[str, list[float]]] = {}
    for arm, series in wall.items():
        rounds = metrics.get(arm) or [{"wall": w} for w in series]
        names = list(rounds[0]) if rounds else []
        arms[arm] = {n: keep([r[n] for r in rounds], dropped) for n in names}
    if "reference" in arms:
        arms["gold"] = arms.pop("reference")
    return arms


def verdict(
    task: Task,
    metrics: Mapping[str, Sequence[Mapping[str, float]]],
    wall: Mapping[str, Sequence[float]],
    dropped: Sequence[int],
) -> dict[str, Any]:
    """The benchmark's verdict over the kept rounds. ``metrics``: per arm, each round's
    parsed times (empty for ``wall``); ``wall``: per arm, each round's seconds."""
    arms = _arm_seconds(metrics, wall, dropped)
    out = benchmark_verdict(task.benchmark, arms, gold_speedup=gold_speedup(task))
    out["samples_s"] = arms  # per arm and metric, the kept rounds' seconds
    return out


def within_noise(verdict: Mapping[str, Any], cfg: EvalConfig) -> bool | None:
    """Is the candidate within noise of the base on the benchmark's own clock (each kept
    round's seconds summed over the metrics)? None without those samples. The reward's
    noise gate must use the clock the speedup was read on, not the whole process's."""
    return _arms_within_noise(verdict.get("samples_s"), cfg)


def _arms_within_noise(arms: Any, cfg: EvalConfig) -> bool | None:
    if not isinstance(arms, Mapping) or not {"baseline", "candidate"} <= set(arms):
        return None
    base, cand = (
        [sum(r) for r in zip(*arms[a].values(), strict=True)] for a in ("baseline", "candidate")
    )
    if not base or len(base) != len(cand):
        return None
    stats = speedup_stats(
        base,
        cand,
        noise_threshold=cfg.noise_threshold,
        max_plausible_speedup=cfg.max_plausible_speedup,
        resamples=cfg.bootstrap_resamples,
        seed=cfg.seed,
    )
    return bool(stats["within_noise"])


def apply_verdict(
    task: Task,
    samples: Samples,
    stats: dict[str, Any],
    info: dict[str, Any],
    speedup: float,
    cfg: EvalConfig,
) -> float:
    """The benchmark's verdict into ``info["benchmark"]``; the speedup it measured over the
    base (its own figure, e.g. GSO's geometric mean) replaces the whole-process one, and its
    clock decides ``within_noise`` (:func:`within_noise`; with a round dropped, also over
    every round)."""
    try:
        found = verdict(task, samples.metrics, samples.wall_s, stats["dropped_rounds"])
    except (ValueError, KeyError, ZeroDivisionError) as exc:
        info["benchmark"] = {"benchmark": task.benchmark, "passed": None, "error": str(exc)}
        return speedup
    info["benchmark"] = found
    noise = within_noise(found, cfg)
    if noise is not None and stats["dropped_rounds"]:
        # a drop never turns noise into a change (timing.timing_stats), on this clock too
        every = _arms_within_noise(_arm_seconds(samples.metrics, samples.wall_s, []), cfg)
        stats["within_noise_all_rounds"] = every
        noise = noise or bool(every)
    if noise is not None:
        stats["within_noise"] = info["within_noise"] = noise
    own = found.get("speedup_base")
    return float(own) if isinstance(own, int | float) and own > 0 else speedup


def failed(task: Task, status: str) -> dict[str, Any]:
    """The verdict of a patch that never reached the timing."""
    return failed_verdict(task.benchmark, status, gold_speedup=gold_speedup(task))


def _gso_tests(task: Task) -> list[str]:
    raw: Any = task.benchmark_fields.get("tests") or []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = [raw]
    return [str(t) for t in raw] if isinstance(raw, list) else []


async def gso_eqcheck(
    sandboxes: Sandboxes, arms: Mapping[str, str], task: Task, timeout: float
) -> dict[str, str]:
    """GSO's equivalence check: each of the row's test scripts runs with ``--reference`` in
    the baseline (storing its result), then with ``--eqcheck`` against that result in every
    other arm. Returns arm -> why it failed (empty: all equivalent, or no scripts)."""
    tests = _gso_tests(task)
    if task.benchmark != "gso" or not tests:
        return {}
    failures: dict[str, str] = {}
    for i, script in enumerate(tests):
        path, prefix = f".git/agentfleet_gso_{i}.py", f".git/agentfleet_gso_{i}"
        for sid in arms.values():
            await sandboxes.write_file(sid, path, script.encode())
        res = await sandboxes.exec(
            arms["baseline"],
            f"python - --reference --file_prefix {prefix} < {path}",
            timeout=timeout,
        )
        if res.timed_out or res.returncode != 0:
            raise RuntimeError(f"GSO test {i} failed on the base: {res.output[-1000:]}")
        # the files API (image sandboxes read the archive off the loop); missing: an error
        result = await sandboxes.read_file(arms["baseline"], f"{prefix}_result.json")
        for arm, sid in arms.items():
            if arm == "baseline" or arm in failures:
                continue
            await sandboxes.write_file(sid, f"{prefix}_result.json", result)
            res = await sandboxes.exec(
                sid, f"python - --eqcheck --file_prefix {prefix} < {path}", timeout=timeout
            )
            if res.timed_out or res.returncode != 0:
                failures[arm] = f"GSO test {i} --eqcheck failed: {res.output[-2000:]}"
    return failures
