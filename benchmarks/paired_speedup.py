"""The speedup of unchanged code by two estimators, over the same samples: the ratio of
the two arms' medians (the evaluator's before 2026-12-04) and the median of the rounds'
paired ratios (``speedup.paired_speedup``, now).

Two sources of samples:

* ``--results FILE``: the ``results.json`` of ``agentfleet bench eval`` (each evaluation
  keeps its kept rounds' seconds); every arm, unchanged code within 1.00 +- 0.05 and the
  references within 5% of their task's median, by each estimator.
* ``--task NAME``: this machine, now. A perf-lite task's workload, copied to a scratch
  folder, run as a fresh process twice per round (A B, then B A: the same code in both
  arms, as the evaluator interleaves them), ``--rounds`` rounds on one CPU; the rounds are
  then cut into evaluations of 5 and of 10 consecutive rounds, and each estimator's share
  within 1.00 +- 0.05 is printed, with the run-to-run spread of the host.

    python benchmarks/paired_speedup.py --results runs/bench-eval-.../results.json
    python benchmarks/paired_speedup.py --task dedupe-pairs --rounds 180 --cpu 0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from agentfleet.bench.common import child_cpu_s
from agentfleet.bench.eval_bench import spread
from agentfleet.evaluation.speedup import paired_speedup, ratio_of_medians

Estimator = Callable[[Sequence[float], Sequence[float]], float]
ESTIMATORS: dict[str, Estimator] = {
    "ratio of medians": ratio_of_medians,
    "median of paired ratios": paired_speedup,
}
TASKS = Path(__file__).resolve().parents[1] / "src/agentfleet/tasks/data/perf-lite"


def within(xs: Sequence[float], tol: float = 0.05) -> str:
    return f"{sum(abs(x - 1) <= tol for x in xs)}/{len(xs)}"


def from_results(path: Path) -> None:
    """Each arm's counts by ``bench eval``'s own :func:`spread`, the speedups recomputed."""
    data = json.loads(path.read_text())
    for row in data["rows"]:
        evals = [e for e in row["evaluations"] if e["status"] == "ok" and e.get("baseline_s")]
        print(f"arm {row['mode']} (hog {row.get('hog')}):")
        for name, f in ESTIMATORS.items():
            got = spread([{**e, "speedup": f(e["baseline_s"], e["candidate_s"])} for e in evals])
            lo, hi = got["noop_range"] or (0.0, 0.0)
            print(
                f"  {name:24s} unchanged within 1.00 +- 0.05: "
                f"{got['noop_within_5pct']}/{got['noop_n']} ({lo:.3f}-{hi:.3f}); "
                f"references within 5% of their median: "
                f"{got['ref_within_5pct_of_median']}/{got['ref_n']}"
            )


def one_run(cwd: Path, cmd: str) -> float:
    return child_cpu_s(cmd, shell=True, cwd=cwd, stdout=subprocess.DEVNULL)


def from_machine(task: str, rounds: int, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(shutil.copytree(TASKS / task / "repo", Path(tmp) / "repo"))
        cmd = "python3 workload.py"
        a: list[float] = []
        b: list[float] = []
        t0 = time.monotonic()
        for r in range(rounds):
            first, second = (a, b) if r % 2 == 0 else (b, a)
            first.append(one_run(repo, cmd))
            second.append(one_run(repo, cmd))
    runs = a + b
    med = statistics.median(runs)
    print(
        f"{task}: {rounds} rounds in {time.monotonic() - t0:.0f} s; one run's CPU time: "
        f"median {med:.3f} s, cv {statistics.pstdev(runs) / med:.1%}, "
        f"within 5% of the median {within([x / med for x in runs])}"
    )
    for k in (5, 10):
        windows = [(a[i : i + k], b[i : i + k]) for i in range(0, rounds - k + 1, k)]
        for name, f in ESTIMATORS.items():
            got = [f(x, y) for x, y in windows]
            print(f"  {k:2d} rounds, {name:24s} within 1.00 +- 0.05: {within(got)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--results", type=Path, help="a results.json of `agentfleet bench eval`")
    src.add_argument("--task", help="a perf-lite task whose workload to time here")
    ap.add_argument("--rounds", type=int, default=180)
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = ap.parse_args()
    if args.results is not None:
        from_results(args.results)
    else:
        if not (TASKS / args.task / "repo").is_dir():
            ap.error(f"no perf-lite task {args.task!r} in {TASKS}")
        if args.rounds < 10:
            ap.error("--rounds must be at least 10")
        from_machine(args.task, args.rounds, args.cpu)


if __name__ == "__main__":
    main()
