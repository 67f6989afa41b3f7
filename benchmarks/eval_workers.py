"""Evaluation throughput and steadiness: 1 worker against pinned workers and Ray actors,
same evaluations.

Starts the real evaluation server (in-process sandboxes, process backend) on 127.0.0.1,
once per mode, and submits the same evaluations to each: every perf-lite task's reference
solution and an empty patch (unchanged code), ``--n`` in all, all at once. Prints per mode
the wall time and throughput, the share of unchanged-code speedups within 1.00 +- 0.05,
and how far each reference's speedups stray from their median; writes JSON with ``--out``
and an SVG plot beside it (same name, ``.svg``).

    python benchmarks/eval_workers.py [--n 40] [--modes 1,2p,2r] [--repeats 5]
        [--hog off|on|both] [--out FILE]

A mode is ``W`` (W local workers, not pinned), ``Wp`` (W local workers pinned to 1 CPU
each) or ``Wr`` (no local worker: W Ray actors, pinned to 1 CPU each, on a local Ray
started here, leasing the jobs over HTTP). ``--hog on`` runs a busy loop (a subprocess,
killed at the end) on the last CPU during each measurement; ``both`` runs every mode
without, then with it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from agentfleet.evaluation.client import EvalClient
from agentfleet.evaluation.config import EvalConfig
from agentfleet.evaluation.schema import EvalRequest
from agentfleet.evaluation.server import create_app, default_evaluator_factory
from agentfleet.fleet.svg_charts import hbar_chart
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_mode(
    mode: str, reqs: list[tuple[str, EvalRequest]], cfg: EvalConfig
) -> dict[str, Any]:
    ray_arm = mode.endswith("r")
    pinned = mode.endswith(("p", "r"))
    workers = int(mode.rstrip("pr"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    actors = None
    if ray_arm:
        from agentfleet.evaluation.ray_workers import ray_eval_workers

        actors = functools.partial(
            ray_eval_workers, "local", server_url=url, workers=workers, cores_per_worker=1,
            confine="off",
        )  # fmt: skip
    app = create_app(
        evaluator_factory=default_evaluator_factory(config=cfg, confine="off"),
        workers=0 if ray_arm else workers,
        cores_per_worker=1 if pinned else 0,
        queue_limit=len(reqs) + 1,
        worker_spec={"config": cfg.model_dump(mode="json")},
        remote_workers=actors,
    )
    async with serve_in_loop(app, port=port) as srv, HttpPool() as pool:
        client = EvalClient(srv.url, pool=pool)
        health = await client.health()
        while ray_arm and len(health["worker_slots"]) < workers:  # the actors are up
            await asyncio.sleep(0.5)
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
    ap.add_argument("--hog", choices=("off", "on", "both"), default="off")
    ap.add_argument("--out", default=None)
    ap.add_argument("--replot", default=None, help="only write the SVG of this JSON")
    a = ap.parse_args()
    if a.replot:
        with open(a.replot) as f:
            data = json.load(f)
        with open(os.path.splitext(a.replot)[0] + ".svg", "w") as f:
            f.write(plot(data))
        return
    cfg = EvalConfig(repeats=a.repeats, target_ci=a.target_ci)
    reqs = requests(a.n)
    out: dict[str, Any] = {"n": a.n, "config": cfg.model_dump(), "hog": a.hog, "modes": []}
    hogs = {"off": [False], "on": [True], "both": [False, True]}[a.hog]
    modes = a.modes.split(",")
    if any(m.endswith("r") for m in modes):
        import ray

        ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False,
                 log_to_driver=False)  # fmt: skip
    try:
        for with_hog in hogs:
            for mode in modes:
                out["modes"].append(measure(mode, reqs, cfg, with_hog))
    finally:
        if any(m.endswith("r") for m in modes):
            ray.shutdown()
    print(
        "| mode | hog | worker CPUs | wall s | evals/min | unchanged within 1.00 +- 0.05 | "
        "unchanged range | references within 5% of median | not ok | load avg (1, 5 min) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m in out["modes"]:
        rng = m["noop_range"] or [0, 0]
        print(
            f"| {m['mode']} | {'yes' if m['hog'] else 'no'} | {m['worker_cpus']} "
            f"| {m['wall_s']:.1f} | {m['evals_per_min']:.1f} "
            f"| {m['noop_within_5pct']}/{m['noop_n']} | {rng[0]:.3f}-{rng[1]:.3f} "
            f"| {m['ref_within_5pct_of_median']}/{m['ref_n']} | {m['not_ok']} "
            f"| {m['loadavg'][0]:.1f}, {m['loadavg'][1]:.1f} |"
        )
    for with_hog in hogs:
        arms = [m for m in out["modes"] if m["hog"] == with_hog]
        for m in arms[1:]:
            ratio = m["evals_per_min"] / arms[0]["evals_per_min"]
            print(f"throughput ratio {m['mode']} / {arms[0]['mode']} (hog {with_hog}): {ratio:.2f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
        svg = os.path.splitext(a.out)[0] + ".svg"
        with open(svg, "w") as f:
            f.write(plot(out))
        print(f"wrote {a.out} and {svg}")


def measure(
    mode: str, reqs: list[tuple[str, EvalRequest]], cfg: EvalConfig, with_hog: bool
) -> dict[str, Any]:
    """One arm, with a busy loop on the last CPU while it runs if ``with_hog``."""
    hog = None
    if with_hog:
        cpu = max(os.sched_getaffinity(0))
        hog = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c", "while 1: pass"])
    try:
        res = asyncio.run(run_mode(mode, reqs, cfg))
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    res["hog"] = with_hog
    res["loadavg"] = os.getloadavg()
    return res


def plot(out: dict[str, Any]) -> str:
    """Throughput per arm, and the worst unchanged-code deviation from 1.00 (target 5%)."""
    names = {"1": "1 worker", "2p": "2 pinned", "2r": "2 Ray actors"}

    def label(m: dict[str, Any]) -> str:
        return names.get(m["mode"], m["mode"]) + (" + hog" if m["hog"] else "")

    thr = [(label(m), m["evals_per_min"], None, "") for m in out["modes"]]
    dev, ref = [], []
    for m in out["modes"]:
        worst = max((abs(s - 1) for s in m["noop_range"] or []), default=0.0) * 100
        dev.append((label(m), worst, None, "over 5%" if worst > 5 else ""))
        rdev = (m["ref_max_dev"] or 0.0) * 100
        ref.append((label(m), rdev, None, "over 5%" if rdev > 5 else ""))
    charts = [
        hbar_chart(thr, title=f"evaluations per minute ({out['n']} evaluations)", unit=""),
        hbar_chart(
            dev, title="unchanged code: worst |speedup - 1| in %", unit="%",
            marker_at=5.0, marker_label="target",
        ),
        hbar_chart(
            ref, title="references: worst distance from their task's median in %", unit="%",
            marker_at=5.0, marker_label="target",
        ),
    ]  # fmt: skip
    heights = [int(c.split('height="', 1)[1].split('"', 1)[0]) for c in charts]
    parts, y = [], 0
    for c, h in zip(charts, heights, strict=True):
        parts.append(c.replace("<svg ", f'<svg y="{y}" ', 1))
        y += h
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="560" height="{y}" '
        f'viewBox="0 0 560 {y}">{"".join(parts)}</svg>\n'
    )


if __name__ == "__main__":
    main()
