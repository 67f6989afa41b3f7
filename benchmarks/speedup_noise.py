"""How trustworthy is the speedup? Evaluate unchanged code and a known ~1.3x change, many times.

Builds a one-task dataset in a temporary folder whose workload repeats a fixed computation
13 times; the "1.3x" patch repeats it 10 times (same output). Runs the real evaluator on the
process backend and prints how many results land within 1.00 +- 0.05 and how many at >= 1.2x.

    .venv/bin/python benchmarks/speedup_noise.py [--n 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from agentfleet.evaluation.evaluator import EvalConfig, Evaluator
from agentfleet.evaluation.schema import EvalRequest
from agentfleet.evaluation.speedup import speedup_stats
from agentfleet.sandbox import ProcessBackend, SandboxService

WORK = """\
def compute():
    total = 0
    for i in range(300_000):
        total += (i * i) % 7
    return total


def run(rounds=13):
    result = 0
    for _ in range(rounds):
        result = compute()
    return result
"""
WORKLOAD = "from work import run\nprint(run())\n"
TEST = (
    "import unittest\nfrom work import compute\n\n\nclass T(unittest.TestCase):\n"
    "    def test_compute(self):\n        self.assertEqual(compute(), 599998)\n"
)


def build_dataset(root: Path) -> str:
    """The task and its ~1.3x patch, made with real git."""
    task = root / "noise" / "repeat13"
    repo = task / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "work.py").write_text(WORK)
    (repo / "workload.py").write_text(WORKLOAD)
    (repo / "tests" / "__init__.py").write_text("")
    (repo / "tests" / "test_work.py").write_text(TEST)
    (root / "noise" / "dataset.yaml").write_text("name: noise\nsplits: {test: [repeat13]}\n")
    (task / "task.yaml").write_text(
        "prompt: make it faster\ntest_cmd: python3 -m unittest -q\n"
        "workload_cmd: python3 workload.py\ntest_files: [tests, workload.py]\n"
    )
    work = root / "git"
    subprocess.run(["cp", "-r", str(repo), str(work)], check=True)
    git = ["git", "-C", str(work), "-c", "user.name=x", "-c", "user.email=x@x"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    (work / "work.py").write_text(WORK.replace("rounds=13", "rounds=10"))
    patch = subprocess.run([*git, "diff"], check=True, capture_output=True, text=True).stdout
    return patch


async def main(n: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        patch = build_dataset(Path(tmp))
        dataset = str(Path(tmp) / "noise")
        roots = [dataset]  # the one dataset this benchmark builds
        backend = ProcessBackend(root=Path(tmp) / "sb")
        async with SandboxService(backend, dataset_roots=roots) as sandboxes:
            evaluator = Evaluator(sandboxes, EvalConfig(repeats=repeats), dataset_roots=roots)
            for label, change in (("unchanged", ""), ("1.3x change", patch)):
                by_clock: dict[str, list[dict[str, object]]] = {"wall": [], "cpu": []}
                start = time.monotonic()
                for _ in range(n):
                    req = EvalRequest(
                        exit_status="Submitted",
                        result=change,
                        instance_id="repeat13",
                        dataset_name=dataset,
                    )
                    res = await evaluator.evaluate(req)
                    assert res.info["status"] == "ok", res.info
                    timing = res.info["timing"]
                    for clock in by_clock:  # both clocks from the very same runs
                        by_clock[clock].append(
                            speedup_stats(
                                timing[f"baseline_{clock}_s"], timing[f"candidate_{clock}_s"]
                            )
                        )
                took = time.monotonic() - start
                for clock, stats in by_clock.items():
                    report(
                        f"{label} ({clock})",
                        [float(s["speedup"]) for s in stats],  # type: ignore[arg-type]
                        sum(bool(s["within_noise"]) for s in stats),
                        repeats,
                    )
                print(f"  ({n} evaluations in {took:.0f} s)")


def report(label: str, speedups: list[float], noise: int, repeats: int) -> None:
    n = len(speedups)
    print(
        f"{label:20s} n={n} repeats={repeats}: median {statistics.median(speedups):.3f}x "
        f"[{min(speedups):.3f}, {max(speedups):.3f}]; "
        f"within 1.00+-0.05: {sum(abs(s - 1.0) <= 0.05 for s in speedups)}/{n}; "
        f">= 1.2x: {sum(s >= 1.2 for s in speedups)}/{n}; flagged within noise: {noise}/{n}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="evaluations of each side")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.repeats))
