"""Time each row of the bundled real-format datasets in its own image: the workload on the
base commit and with the gold patch (after the row's rebuild), read the way its benchmark
reads it (GSO ``Execution time:``, pytest ``call`` durations, SWE-fficiency ``Mean:``), and
check the tests pass on both sides.

    agentfleet images build --dataset gso-mini     # (and the other two) first
    python benchmarks/real_minis_check.py gso-mini swe-perf-mini swefficiency-mini

One container per side (``docker run --rm --network none --cpus 1``), ``--runs`` timed
runs inside it (default 3), the median reported.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys

from agentfleet.tasks import Task, load_dataset

PATTERNS = {
    "gso": r"Execution time:\s*([0-9.eE+-]+)",
    "pytest": r"^([0-9.]+)s call ",
    "mean": r"^Mean:\s*([0-9.eE+-]+)",
}
SEP = "=== agentfleet run ==="


def _side(task: Task, gold: bool, runs: int) -> tuple[bool, list[float]]:
    apply = f"git apply <<'GOLD_PATCH_EOF'\n{task.solution_patch}GOLD_PATCH_EOF\n" if gold else ""
    rebuild = f"{task.rebuild_cmd}\n" if task.rebuild_cmd and gold else ""
    timed = "\n".join(
        f"echo '{SEP}'; s=$(date +%s%N); {{\n{task.workload_cmd}\n}}; "
        'echo "WALL $(( $(date +%s%N) - s ))"'
        for _ in range(runs)
    )
    script = (
        f"set -e\ncd {task.workdir}\n{task.env_activate}\n{apply}{rebuild}"
        f"{task.test_cmd} >/dev/null 2>&1 && echo TESTS_PASS || echo TESTS_FAIL\n{timed}\n"
    )
    argv = ["docker", "run", "--rm", "--network", "none", "--cpus", "1", str(task.image)]
    out = subprocess.run([*argv, "bash", "-c", script], capture_output=True, text=True).stdout
    times = []
    for chunk in out.split(SEP)[1:]:
        if task.workload_parser == "wall":
            found = [int(x) / 1e9 for x in re.findall(r"WALL (\d+)", chunk)]
        else:
            pattern = re.compile(PATTERNS[task.workload_parser], re.MULTILINE)
            found = [float(x) for x in pattern.findall(chunk)]
        times.append(sum(found))
    return "TESTS_PASS" in out, times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{'row':28} {'timing':7} {'base s':>8} {'gold s':>8} {'speedup':>8}  tests")
    worst = float("inf")
    for name in args.datasets:
        for task in load_dataset(name).tasks():
            base_ok, base = _side(task, False, args.runs)
            gold_ok, gold = _side(task, True, args.runs)
            b, g = statistics.median(base or [0]), statistics.median(gold or [0])
            x = b / g if g > 0 else float("inf")
            worst = min(worst, x)
            tests = "pass" if base_ok and gold_ok else f"FAIL (base {base_ok}, gold {gold_ok})"
            print(f"{task.id:28} {task.workload_parser:7} {b:8.3f} {g:8.4f} {x:7.1f}x  {tests}")
    print(f"lowest gold speedup: {worst:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
