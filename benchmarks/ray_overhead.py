"""What the Ray backend costs against the local one, on one machine.

The same small fleet runs with the local backend (``run_fleet``: one event loop) and with
the Ray backend (``run_fleet_ray``, ``--shards`` actors on a local Ray started once, outside
the timings; its start-up time is printed apart). Model: scripted, ``--steps`` replies of
``true`` with ``--delay`` seconds each. Two modes:

- ``agent`` (default): the agents never submit (they stop at the step limit), so the
  evaluation server answers "not submitted" at once: sandbox + agent loop + results only.
- ``eval``: the agents submit (an empty patch) and are evaluated (``--eval-repeats``):
  the whole pipeline, with the noise of timing workloads on a shared machine.

Usage: .venv/bin/python benchmarks/ray_overhead.py [--tasks 8] [--rounds 2] [--mode agent]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray

from agentfleet.agent import AgentConfig
from agentfleet.fleet.ray_backend import run_fleet_ray
from agentfleet.fleet.runner import FleetConfig, TaskOutcome, run_fleet
from agentfleet.models import SUBMIT_SENTINEL, ModelSpec
from agentfleet.models.offline import bash_reply
from agentfleet.tasks import load_dataset


def model(tmp: Path, steps: int, delay: float, submit: bool) -> ModelSpec:
    replies = [bash_reply("step", "true") for _ in range(steps)]
    if submit:
        replies[-1] = bash_reply("done", f"echo {SUBMIT_SENTINEL}")
    path = tmp / "replies.json"
    path.write_text(json.dumps({"replies": replies}))
    spec = ModelSpec(f"scripted:{path}", delay_s=delay)
    spec.prepare()
    return spec


def fleet(
    tmp: Path, name: str, spec: ModelSpec, tasks: list[str], args: argparse.Namespace
) -> FleetConfig:
    return FleetConfig(
        model=spec,
        run_dir=tmp / name,
        task_ids=tasks,
        workers=args.workers,
        agent=AgentConfig(step_limit=args.steps),
        sandbox_root=tmp / "sandboxes",
        eval_repeats=args.eval_repeats,
    )


def check(outcomes: list[TaskOutcome], n: int, submit: bool) -> None:
    assert len(outcomes) == n, outcomes
    for o in outcomes:
        assert not o.error or not submit, o
        assert (o.exit_status == "Submitted") == submit, o


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--delay", type=float, default=0.2)
    p.add_argument("--rounds", type=int, default=2, help="runs of each backend (interleaved)")
    p.add_argument("--mode", choices=["agent", "eval"], default="agent")
    p.add_argument("--eval-repeats", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args()

    submit = args.mode == "eval"
    ids = load_dataset("perf-lite").task_ids("test")
    tasks = [ids[i % len(ids)] for i in range(args.tasks)]
    if len(set(tasks)) != len(tasks):
        sys.exit(f"perf-lite/test has {len(ids)} tasks; use --tasks <= {len(ids)}")

    t0 = time.monotonic()
    ray.init(
        num_cpus=os.cpu_count() or 2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    ray_init_s = time.monotonic() - t0
    local_s: list[float] = []
    ray_s: list[float] = []
    startup_s: list[float] = []  # run_fleet_ray called -> first task dispatched
    try:
        with tempfile.TemporaryDirectory(prefix="agentfleet-ray-bench-") as d:
            tmp = Path(d)
            spec = model(tmp, args.steps, args.delay, submit)
            for r in range(args.rounds):
                cfg = fleet(tmp, f"local-{r}", spec, tasks, args)
                t = time.monotonic()
                check(asyncio.run(run_fleet(cfg)), len(tasks), submit)
                local_s.append(time.monotonic() - t)
                cfg = fleet(tmp, f"ray-{r}", spec, tasks, args)
                first: list[float] = []

                def listen(event: str, *_: object, first: list[float] = first) -> None:
                    if event == "start" and not first:
                        first.append(time.monotonic())

                t = time.monotonic()
                check(run_fleet_ray(cfg, shards=args.shards, listener=listen), len(tasks), submit)
                ray_s.append(time.monotonic() - t)
                startup_s.append(first[0] - t)
                print(
                    f"round {r + 1}: local {local_s[-1]:.2f} s, ray {ray_s[-1]:.2f} s",
                    file=sys.stderr,
                )
    finally:
        ray.shutdown()

    floor = args.steps * args.delay
    local, remote = statistics.median(local_s), statistics.median(ray_s)
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "ray": ray.__version__,
        },
        "fleet": {
            "tasks": len(tasks),
            "workers": args.workers,
            "shards": args.shards,
            "steps": args.steps,
            "delay_s": args.delay,
            "mode": args.mode,
            "eval_repeats": args.eval_repeats if submit else 0,
        },
        "model_floor_s": floor,
        "ray_init_s": round(ray_init_s, 2),
        "local_s": [round(x, 2) for x in local_s],
        "ray_s": [round(x, 2) for x in ray_s],
        "ray_actor_startup_s": [round(x, 2) for x in startup_s],
        "overhead_s": round(remote - local, 2),
        "overhead_pct": round(100 * (remote - local) / local, 1),
    }
    print(
        f"fleet: {len(tasks)} tasks x {args.steps} steps x {args.delay} s, "
        f"{args.workers} workers, mode {args.mode}; model floor {floor:.1f} s"
    )
    print(f"ray.init (once, not in the timings): {ray_init_s:.1f} s")
    print(f"local backend:            median {local:.2f} s  {result['local_s']}")
    print(f"ray backend, {args.shards} shards:   median {remote:.2f} s  {result['ray_s']}")
    print(
        f"  of which actors starting (first task dispatched after): "
        f"median {statistics.median(startup_s):.2f} s"
    )
    print(f"overhead: {remote - local:+.2f} s ({result['overhead_pct']:+.1f} %)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
