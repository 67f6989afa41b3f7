"""Evaluation throughput and steadiness: now ``agentfleet bench eval`` (same options;
``--out`` is a run folder). Kept so that older commands still run:

    python benchmarks/eval_workers.py --n 40 --modes 1,2p,2r --hog both --out DIR
"""

from __future__ import annotations

import sys

from agentfleet.bench.cli import bench_app

if __name__ == "__main__":
    bench_app(["eval", *sys.argv[1:]], prog_name="eval_workers.py")
