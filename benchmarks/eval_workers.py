"""Evaluation throughput and steadiness: 1 worker against pinned workers, same evaluations.

Starts the real evaluation server (in-process sandboxes, process backend) on 127.0.0.1,
once per mode, and submits the same evaluations to each: every perf-lite task's reference
solution and an empty patch (unchanged code), ``--n`` in all, all at once. Prints per mode
the wall time and throughput, the share of unchanged-code speedups within 1.00 +- 0.05,
and how far each reference's speedups stray from their median; writes JSON with ``--out``.

    python benchmarks/eval_workers.py [--n 40] [--modes 1,2p] [--repeats 5] [--out FILE]

A mode is ``W`` (W workers, not pinned) or ``Wp`` (W workers pinned to 1 CPU each).
``--hog`` runs a busy loop on the last CPU during the measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from agentfleet.evaluation.client import EvalClient
from agentfleet.evaluation.config import EvalConfig
from agentfleet.evaluation.schema import EvalRequest
from agentfleet.evaluation.server import create_app, default_evaluator_factory
from agentfleet.http import HttpPool
from agentfleet.serving import serve_in_loop
from agentfleet.tasks import load_dataset


def requests(n: int) -> list[tuple[str, EvalRequest]]:
    ds = load_dataset("perf-lite")
    tasks = [(split, ds.task(t)) for split, ids in sorted(ds.splits.items()) for t in ids]
    out: list[tuple[str, EvalRequest]] = []
    i = 0
    while len(out) < n:
        split, task = tasks[(i // 2) % len(tasks)]
        kind = "reference" if i % 2 == 0 else "noop"
        patch = task.solution_patch if kind == "reference" else ""
        req = EvalRequest(
            exit_status="Submitted",
            result=patch,
            instance_id=task.id,
            dataset_name="perf-lite",
            split=split,
            idempotency_key=f"bench-{i}-{time.time_ns()}",
        )
        out.append((f"{kind}:{task.id}", req))
        i += 1
    return out


async def run_mode(
    mode: str, reqs: list[tuple[str, EvalRequest]], cfg: EvalConfig
) -> dict[str, Any]:
    pinned = mode.endswith("p")
    workers = int(mode.rstrip("p"))
    app = create_app(
        evaluator_factory=default_evaluator_factory(config=cfg, confine="off"),
        workers=workers,
        cores_per_worker=1 if pinned else 0,
        queue_limit=len(reqs) + 1,
    )
    async with serve_in_loop(app) as srv, HttpPool() as pool:
        client = EvalClient(srv.url, pool=pool)
        health = await client.health()
        t0 = time.monotonic()
        results = await asyncio.gather(*(client.evaluate(r) for _, r in reqs))
        wall = time.monotonic() - t0
    rows = []
    for (label, _), res in zip(reqs, results, strict=True):
        timing = res.info.get("timing") or {}
        rows.append(
            {
                "label": label,
                "status": res.info.get("status"),
                "speedup": res.speedup,
                "rounds": timing.get("rounds"),
                "dropped": timing.get("dropped_rounds"),
            }
        )
    return {
        "mode": mode,
        "workers": workers,
        "pinned": pinned,
        "worker_cpus": [w["cpus"] for w in health.get("worker_slots", [])],
        "wall_s": wall,
        "evals_per_min": 60 * len(reqs) / wall,
        "rows": rows,
        **spread(rows),
    }


def spread(rows: list[dict[str, Any]]) -> dict[str, Any]:
    noop = [r["speedup"] for r in rows if r["label"].startswith("noop") and r["status"] == "ok"]
    refs: dict[str, list[float]] = {}
    for r in rows:
        if r["label"].startswith("reference") and r["status"] == "ok":
            refs.setdefault(r["label"], []).append(r["speedup"])
    devs = [abs(s / statistics.median(v) - 1) for v in refs.values() for s in v if len(v) > 1]
    return {
        "noop_n": len(noop),
        "noop_within_5pct": sum(1 for s in noop if abs(s - 1) <= 0.05),
        "noop_range": [min(noop), max(noop)] if noop else None,
        "ref_n": len(devs),
        "ref_within_5pct_of_median": sum(1 for d in devs if d <= 0.05),
        "ref_max_dev": max(devs) if devs else None,
        "not_ok": sum(1 for r in rows if r["status"] != "ok"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--modes", default="1,2p")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--target-ci", type=float, default=None)
    ap.add_argument("--hog", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    cfg = EvalConfig(repeats=a.repeats, target_ci=a.target_ci)
    reqs = requests(a.n)
    hog = None
    if a.hog:
        cpu = max(os.sched_getaffinity(0))
        hog = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c", "while 1: pass"])
    out: dict[str, Any] = {"n": a.n, "config": cfg.model_dump(), "hog": a.hog, "modes": []}
    try:
        for mode in a.modes.split(","):
            out["modes"].append(asyncio.run(run_mode(mode, reqs, cfg)))
            out["modes"][-1]["loadavg"] = os.getloadavg()
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    print(
        "| mode | worker CPUs | wall s | evals/min | unchanged within 1.00 +- 0.05 | "
        "unchanged range | references within 5% of median | not ok | load avg (1, 5 min) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for m in out["modes"]:
        rng = m["noop_range"] or [0, 0]
        print(
            f"| {m['mode']} | {m['worker_cpus']} | {m['wall_s']:.1f} | {m['evals_per_min']:.1f} "
            f"| {m['noop_within_5pct']}/{m['noop_n']} | {rng[0]:.3f}-{rng[1]:.3f} "
            f"| {m['ref_within_5pct_of_median']}/{m['ref_n']} | {m['not_ok']} "
            f"| {m['loadavg'][0]:.1f}, {m['loadavg'][1]:.1f} |"
        )
    if len(out["modes"]) > 1:
        first, last = out["modes"][0], out["modes"][-1]
        print(f"throughput ratio {last['evals_per_min'] / first['evals_per_min']:.2f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
