"""What the Ray backend costs against the local one: a thin wrapper of
``agentfleet.bench.ray_bench`` (the same as ``agentfleet bench fleet --backend ray``), with
the ``eval`` mode (agents submit and are evaluated) and ``--json`` on top.

Usage: .venv/bin/python benchmarks/ray_overhead.py [--tasks 8] [--rounds 2] [--mode agent]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agentfleet.bench.common import MissingExtra
from agentfleet.bench.ray_bench import MODES, run_ray_bench, table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", type=int, default=None, help="perf-lite test tasks (default: all)")
    p.add_argument("--workers", type=int, default=None, help="agents at once (default: all)")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--delay", type=float, default=0.2)
    p.add_argument("--rounds", type=int, default=2, help="runs of each backend (interleaved)")
    p.add_argument("--mode", choices=MODES, default="agent")
    p.add_argument("--eval-repeats", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args()
    try:
        rows, info = run_ray_bench(
            n=args.tasks,
            steps=args.steps,
            delay=args.delay,
            shards=args.shards,
            rounds=args.rounds,
            workers=args.workers,
            mode=args.mode,
            eval_repeats=args.eval_repeats,
            log=lambda m: print(m, file=sys.stderr),
        )
    except (MissingExtra, ValueError) as exc:
        sys.exit(f"error: {exc}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, **info}, indent=2))


if __name__ == "__main__":
    main()
