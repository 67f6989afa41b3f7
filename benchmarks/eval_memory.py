"""What the evaluation server's job manager holds in memory for jobs with large patches.

Submits ``--jobs`` jobs whose patch is ``--patch-kb`` KiB each to a JobManager (test-mode
evaluator, a SQLite store in a temporary folder), waits until all are done, and prints the
Python memory still allocated (tracemalloc) beyond what it was before the first submit.

    .venv/bin/python benchmarks/eval_memory.py [--jobs 200] [--patch-kb 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import tracemalloc
from pathlib import Path

from agentfleet.evaluation.jobs import JobManager, TestModeEvaluator
from agentfleet.evaluation.schema import EvalRequest
from agentfleet.evaluation.store import JobStore


async def main(jobs: int, patch_kb: int) -> None:
    patch = "diff --git a/x b/x\n" + "+" * (patch_kb * 1024) + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        async with JobStore(Path(tmp) / "jobs.sqlite") as store:
            manager = JobManager(store, TestModeEvaluator(0), workers=2, queue_limit=jobs + 1)
            await manager.start()
            gc.collect()
            tracemalloc.start()
            base, _ = tracemalloc.get_traced_memory()
            ids = []
            for i in range(jobs):
                req = EvalRequest(
                    exit_status="Submitted", result=patch, instance_id=f"t{i}", split="test"
                )
                ids.append((await manager.submit(req, f"key-{i}"))[0].id)
                del req
            queued_peak, _ = tracemalloc.get_traced_memory()
            for job_id in ids:
                await manager.wait(job_id, None)
            gc.collect()
            held, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            await manager.stop()
    mib = 1024 * 1024
    print(f"{jobs} jobs x {patch_kb} KiB patches ({jobs * len(patch) / mib:.0f} MiB submitted)")
    print(f"held right after the submits: {(queued_peak - base) / mib:.1f} MiB")
    print(f"held once all were done: {(held - base) / mib:.1f} MiB")
    print(f"peak: {(peak - base) / mib:.1f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--patch-kb", type=int, default=1024)
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.patch_kb))
