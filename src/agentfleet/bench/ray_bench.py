"""``agentfleet bench fleet --backend ray``: what the Ray backend costs against the local one.

The same small fleet (perf-lite test tasks, a scripted model of ``steps`` replies of
``true`` with ``delay`` seconds each) runs with the local backend (``run_fleet``: one event
loop) and with the Ray backend (``run_fleet_ray``, ``shards`` actors), rounds interleaved.
Ray is started once, outside the timings (``ray.init`` reported apart); the actors' start-up
(``run_fleet_ray`` called -> first task dispatched) is reported too. Modes:

- ``agent`` (default): the agents never submit (they stop at the step limit), so the
  evaluation server answers "not submitted" at once: sandbox + agent loop + results only.
- ``eval``: the agents submit (an empty patch) and are evaluated (``eval_repeats``): the
  whole pipeline, with the noise of timing workloads on a shared machine.

Ray is imported here only (and this module only for ``--backend ray``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from agentfleet.bench.common import Column, MissingExtra, columns_table

MODES = ("agent", "eval")
DATASET = "perf-lite"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingExtra(
            f"the ray backend needs Ray: pip install 'agentfleet[ray]' ({exc})"
        ) from exc
    return ray


def bench_tasks(n: int | None) -> list[str]:
    """The first ``n`` perf-lite test tasks (all when ``None``)."""
    from agentfleet.tasks import load_dataset

    ids = load_dataset(DATASET).task_ids("test")
    if n is None:
        return list(ids)
    if n > len(ids):
        raise ValueError(f"{DATASET}/test has {len(ids)} tasks: use --n <= {len(ids)}")
    return list(ids[:n])


def _model(tmp: Path, steps: int, delay: float, submit: bool) -> Any:
    from agentfleet.models import SUBMIT_SENTINEL, ModelSpec
    from agentfleet.models.offline import bash_reply

    replies = [bash_reply("step", "true") for _ in range(steps)]
    if submit:
        replies[-1] = bash_reply("done", f"echo {SUBMIT_SENTINEL}")
    path = tmp / "replies.json"
    path.write_text(json.dumps({"replies": replies}))
    spec = ModelSpec(f"scripted:{path}", delay_s=delay)
    spec.prepare()
    return spec


def _statuses(outcomes: list[Any]) -> dict[str, int]:
    return dict(Counter(o.exit_status for o in outcomes))


def run_ray_bench(
    *,
    n: int | None = None,
    steps: int = 5,
    delay: float = 0.2,
    shards: int = 2,
    rounds: int = 2,
    workers: int | None = None,
    mode: str = "agent",
    eval_repeats: int = 1,
    log: Any = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows (local, ray) and run info. ``workers``: agents at once (default: all)."""
    if mode not in MODES:
        raise ValueError(f"mode: choose from {', '.join(MODES)}")
    if shards < 1 or rounds < 1 or steps < 1:
        raise ValueError("--shards, --rounds and --steps must be at least 1")
    tasks = bench_tasks(n)
    ray = _import_ray()

    from agentfleet.agent import AgentConfig
    from agentfleet.fleet.config import FleetConfig
    from agentfleet.fleet.ray_backend import run_fleet_ray
    from agentfleet.fleet.runner import run_fleet
    from agentfleet.ray_setup import init_ray

    submit = mode == "eval"
    w = workers or len(tasks)
    started_ray = not ray.is_initialized()
    ray_init_s: float | None = None
    if started_ray:
        t0 = time.monotonic()
        init_ray(num_cpus=os.cpu_count() or 2, log_to_driver=False)
        ray_init_s = time.monotonic() - t0
    local_s: list[float] = []
    ray_s: list[float] = []
    startup_s: list[float] = []  # run_fleet_ray called -> first task dispatched
    statuses: dict[str, Counter[str]] = {"local": Counter(), "ray": Counter()}
    try:
        with tempfile.TemporaryDirectory(prefix="agentfleet-ray-bench-") as d:
            tmp = Path(d)
            spec = _model(tmp, steps, delay, submit)

            def fleet(name: str) -> FleetConfig:
                return FleetConfig(
                    model=spec,
                    run_dir=tmp / name,
                    task_ids=tasks,
                    workers=w,
                    agent=AgentConfig(step_limit=steps),
                    sandbox_root=tmp / "sandboxes",
                    eval_repeats=eval_repeats,
                    sample_every_s=0,
                )

            for r in range(rounds):
                t = time.monotonic()
                outcomes = asyncio.run(run_fleet(fleet(f"local-{r}")))
                local_s.append(time.monotonic() - t)
                statuses["local"].update(_statuses(outcomes))
                first: list[float] = []

                def listen(event: str, *_: object, first: list[float] = first) -> None:
                    if event == "start" and not first:
                        first.append(time.monotonic())

                t = time.monotonic()
                # each shard evaluates with its own embedded server, as measured in
                # docs/benchmarks.md (run --backend ray defaults to Ray evaluation actors)
                outcomes = run_fleet_ray(
                    fleet(f"ray-{r}"), shards=shards, listener=listen, eval_on="shards"
                )
                ray_s.append(time.monotonic() - t)
                startup_s.append(first[0] - t if first else float("nan"))
                statuses["ray"].update(_statuses(outcomes))
                if log is not None:
                    log(f"ray bench round {r + 1}: local {local_s[-1]:.2f} s, ray {ray_s[-1]:.2f}")
    finally:
        if started_ray:
            ray.shutdown()

    local, remote = statistics.median(local_s), statistics.median(ray_s)
    common = {"tasks": len(tasks), "workers": w, "steps": steps, "delay_s": delay, "mode": mode}
    expected = "Submitted" if submit else "LimitsExceeded"
    rows: list[dict[str, Any]] = [
        {
            "backend": "local",
            **common,
            "shards": None,
            "wall_median_s": local,
            "walls_s": local_s,
            "overhead_s": None,
            "overhead_pct": None,
            "ray_init_s": None,
            "actor_startup_s": None,
            "statuses": dict(statuses["local"]),
        },
        {
            "backend": f"ray ({shards} shards)",
            **common,
            "shards": shards,
            "wall_median_s": remote,
            "walls_s": ray_s,
            "overhead_s": remote - local,
            "overhead_pct": 100 * (remote - local) / local if local else float("nan"),
            "ray_init_s": ray_init_s,
            "actor_startup_s": statistics.median(startup_s),
            "actor_startups_s": startup_s,
            "statuses": dict(statuses["ray"]),
        },
    ]
    for row, counts in zip(rows, statuses.values(), strict=True):
        row["unexpected"] = sum(v for k, v in counts.items() if k != expected)
    info = {
        "ray_version": ray.__version__,
        "tasks": tasks,
        "model_floor_s": steps * delay,
        "eval_repeats": eval_repeats if submit else 0,
        "ray_started_by_bench": started_ray,
    }
    return rows, info


COLUMNS: list[Column] = [
    ("backend", "backend"),
    ("tasks", "tasks"),
    ("steps", "steps"),
    ("delay s", "delay_s"),
    ("wall median s", "wall_median_s"),
    ("walls s", lambda r: ", ".join(f"{x:.2f}" for x in r["walls_s"])),
    ("overhead s", "overhead_s"),
    ("overhead %", lambda r: None if r["overhead_pct"] is None else f"{r['overhead_pct']:+.1f}"),
    ("ray.init s", "ray_init_s"),
    ("actor start-up s", "actor_startup_s"),
]


table = functools.partial(columns_table, COLUMNS)
