"""``agentfleet bench eval``: evaluation throughput and steadiness, 1 worker against pinned
workers and Ray actors, the same evaluations.

Starts the real evaluation server (in-process sandboxes, process backend, unconfined) on
127.0.0.1, once per arm, and submits the same evaluations to each: every perf-lite task's
reference solution and an empty patch (unchanged code), alternately, ``n`` in all, all at
once. Per arm: the wall time and throughput, the share of unchanged-code speedups within
1.00 +- 0.05, and how far each reference's speedups stray from their task's median.

An arm (``--modes``) is ``W`` (W local workers, not pinned), ``Wp`` (W local workers
pinned to 1 CPU each) or ``Wr`` (no local worker: W Ray actors pinned to 1 CPU each,
leasing the jobs over HTTP, on a local Ray started here unless this process has one).
``hog``: ``on`` runs a busy loop pinned to the last CPU during each arm; ``both`` runs
every arm without, then with it. Before each arm, :func:`cpu_noise` times a fixed loop
(with the hog, if on): the host's own spread, against which the arm's is read.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from agentfleet.bench.common import Column, MissingExtra, columns_table, cpu_noise
from agentfleet.evaluation.client import EvalClient
from agentfleet.evaluation.config import EvalConfig
from agentfleet.evaluation.ray_workers import ray_eval_workers
from agentfleet.evaluation.schema import EvalRequest
from agentfleet.evaluation.server import create_app, default_evaluator_factory
from agentfleet.fleet.svg_charts import hbar_chart
from agentfleet.http import HttpPool
from agentfleet.serving import serve_in_loop
from agentfleet.tasks import load_dataset

HOGS = {"off": [False], "on": [True], "both": [False, True]}
ACTORS_UP_S = 180.0  # how long a Ray arm waits for its actors to ask for work
_MODE = re.compile(r"(\d+)([pr]?)")
Log = Callable[[str], None]
Requests = list[tuple[str, EvalRequest]]  # (label, request)


def parse_mode(mode: str) -> tuple[int, bool, bool]:
    """``W``, ``Wp`` or ``Wr`` -> (workers, pinned, ray); ValueError otherwise."""
    m = _MODE.fullmatch(mode.strip())
    if m is None or int(m.group(1)) < 1:
        raise ValueError(f"mode {mode!r}: W, Wp or Wr with W >= 1 (e.g. 1,2p,2r)")
    return int(m.group(1)), m.group(2) in ("p", "r"), m.group(2) == "r"


def requests(n: int) -> Requests:
    """``n`` (label, EvalRequest): each perf-lite task's reference, then an empty patch."""
    ds = load_dataset("perf-lite")
    tasks = [(split, ds.task(t)) for split, ids in sorted(ds.splits.items()) for t in ids]
    out: Requests = []
    for i in range(n):
        split, task = tasks[(i // 2) % len(tasks)]
        kind = "reference" if i % 2 == 0 else "noop"
        req = EvalRequest(
            exit_status="Submitted",
            result=task.solution_patch if kind == "reference" else "",
            instance_id=task.id,
            dataset_name="perf-lite",
            split=split,
            idempotency_key=f"bench-{i}-{time.time_ns()}",
        )
        out.append((f"{kind}:{task.id}", req))
    return out


async def run_arm(mode: str, reqs: Requests, cfg: EvalConfig) -> dict[str, Any]:
    """One arm: a fresh server (and its actors), every request at once, the figures."""
    workers, pinned, ray_arm = parse_mode(mode)
    app = create_app(
        evaluator_factory=default_evaluator_factory(config=cfg, confine="off"),
        workers=0 if ray_arm else workers,
        cores_per_worker=1 if pinned else 0,
        queue_limit=len(reqs) + 1,
        worker_spec={"config": cfg.model_dump(mode="json")},
    )
    async with AsyncExitStack() as stack:
        srv = await stack.enter_async_context(serve_in_loop(app))
        pool = await stack.enter_async_context(HttpPool())
        if ray_arm:
            await stack.enter_async_context(
                ray_eval_workers(
                    "local",
                    server_url=srv.url,
                    workers=workers,
                    cores_per_worker=1,
                    confine="off",
                )
            )
        client = EvalClient(srv.url, pool=pool)
        health = await client.health()
        async with asyncio.timeout(ACTORS_UP_S):  # the actors are up: all asked for work
            while ray_arm and len(health["worker_slots"]) < workers:
                await asyncio.sleep(0.5)
                health = await client.health()
        t0 = time.monotonic()
        results = await asyncio.gather(*(client.evaluate(r) for _, r in reqs))
        wall = time.monotonic() - t0
    evals = []
    for (label, _), res in zip(reqs, results, strict=True):
        timing = res.info.get("timing") or {}
        evals.append(
            {
                "label": label,
                "status": res.info.get("status"),
                "speedup": res.speedup,
                "rounds": timing.get("rounds"),
                "dropped": timing.get("dropped_rounds"),
                # the kept rounds' seconds on the chosen clock, to read the spread again
                "baseline_s": timing.get("baseline_s"),
                "candidate_s": timing.get("candidate_s"),
            }
        )
    return {
        "mode": mode,
        "workers": workers,
        "pinned": pinned,
        "worker_cpus": [w["cpus"] for w in health.get("worker_slots", [])],
        "wall_s": wall,
        "evals_per_min": 60 * len(reqs) / wall,
        "evaluations": evals,
        **spread(evals),
    }


def spread(evals: list[dict[str, Any]]) -> dict[str, Any]:
    """Unchanged code within 1.00 +- 0.05; references within 5% of their task's median;
    the rounds an evaluation took, on average."""
    noop = [e["speedup"] for e in evals if e["label"].startswith("noop") and e["status"] == "ok"]
    refs: dict[str, list[float]] = {}
    for e in evals:
        if e["label"].startswith("reference") and e["status"] == "ok":
            refs.setdefault(e["label"], []).append(e["speedup"])
    devs = [abs(s / statistics.median(v) - 1) for v in refs.values() for s in v if len(v) > 1]
    rounds = [e["rounds"] for e in evals if e.get("rounds")]
    return {
        "noop_n": len(noop),
        "noop_within_5pct": sum(1 for s in noop if abs(s - 1) <= 0.05),
        "noop_range": [min(noop), max(noop)] if noop else None,
        "ref_n": len(devs),
        "ref_within_5pct_of_median": sum(1 for d in devs if d <= 0.05),
        "ref_max_dev": max(devs) if devs else None,
        "not_ok": sum(1 for e in evals if e["status"] != "ok"),
        "rounds_mean": statistics.mean(rounds) if rounds else None,  # the cost of --target-ci
    }


def measure(mode: str, reqs: Requests, cfg: EvalConfig, with_hog: bool) -> dict[str, Any]:
    """One arm, with a busy loop pinned to the last CPU while it runs if ``with_hog``."""
    hog = None
    if with_hog:
        cpu = max(os.sched_getaffinity(0))
        spin = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile 1: pass"
        hog = subprocess.Popen([sys.executable, "-c", spin])
    try:
        noise = cpu_noise()
        res = asyncio.run(run_arm(mode, reqs, cfg))
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    res["hog"] = with_hog
    res["host_noise"] = noise
    res["loadavg"] = list(os.getloadavg())
    return res


def run_eval_bench(
    *,
    n: int = 40,
    modes: list[str] | None = None,
    repeats: int = 5,
    target_ci: float | None = None,
    hog: str = "off",
    log: Log | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every arm of ``modes`` (default ``1,2p``) for each hog setting: rows (one per arm)
    and run info (the evaluator's settings)."""
    modes = modes or ["1", "2p"]
    for mode in modes:
        parse_mode(mode)
    if hog not in HOGS:
        raise ValueError(f"hog {hog!r}: off, on or both")
    if n < 1 or repeats < 1:
        raise ValueError("n and repeats must be at least 1")
    # every round: the spread targets are about the figures of the full protocol
    cfg = EvalConfig(repeats=repeats, target_ci=target_ci, early_stop_rounds=None)
    reqs = requests(n)
    ray = _start_ray() if any(parse_mode(m)[2] for m in modes) else None
    rows = []
    try:
        for with_hog in HOGS[hog]:
            for mode in modes:
                rows.append(measure(mode, reqs, cfg, with_hog))
                if log is not None:
                    r = rows[-1]
                    log(f"eval bench {mode} hog={with_hog}: {r['evals_per_min']:.1f} evals/min")
    finally:
        if ray is not None:
            ray.shutdown()
    return rows, {"eval_config": cfg.model_dump(mode="json"), "ratios": ratios(rows)}


def _start_ray() -> Any:
    """A local Ray with this process's CPUs, or None when Ray is already up (kept)."""
    try:
        import ray
    except ImportError as exc:
        raise MissingExtra(f"Ray arms need Ray: pip install 'agentfleet[ray]' ({exc})") from exc
    if ray.is_initialized():
        return None
    from agentfleet.ray_setup import init_ray

    init_ray(num_cpus=len(os.sched_getaffinity(0)), log_to_driver=False)
    return ray


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each arm's throughput over the first arm's, per hog setting."""
    out = []
    for with_hog in (False, True):
        arms = [r for r in rows if r["hog"] == with_hog]
        for r in arms[1:]:
            ratio = r["evals_per_min"] / arms[0]["evals_per_min"]
            out.append(
                {"mode": r["mode"], "over": arms[0]["mode"], "hog": with_hog, "ratio": ratio}
            )
    return out


def _range(r: dict[str, Any]) -> str:
    lo, hi = r["noop_range"] or (0.0, 0.0)
    return f"{lo:.3f}-{hi:.3f}"


def _noise(r: dict[str, Any]) -> str:
    q = r.get("host_noise")
    return f"{q['cv']:.1%}, {q['within_5pct']}/{q['runs']}" if q else "-"


COLUMNS: list[Column] = [
    ("mode", "mode"),
    ("hog", lambda r: "yes" if r["hog"] else "no"),
    ("worker CPUs", lambda r: ", ".join(c or "-" for c in r["worker_cpus"]) or "-"),
    ("wall s", lambda r: f"{r['wall_s']:.1f}"),
    ("evals/min", lambda r: f"{r['evals_per_min']:.1f}"),
    ("unchanged within 1.00 +- 0.05", lambda r: f"{r['noop_within_5pct']}/{r['noop_n']}"),
    ("unchanged range", _range),
    ("references within 5% of median", lambda r: f"{r['ref_within_5pct_of_median']}/{r['ref_n']}"),
    ("not ok", "not_ok"),
    ("rounds (mean)", lambda r: f"{r['rounds_mean']:.1f}" if r.get("rounds_mean") else "-"),
    ("host noise: loop CPU cv, within 5%", _noise),
    ("load avg (1, 5 min)", lambda r: f"{r['loadavg'][0]:.1f}, {r['loadavg'][1]:.1f}"),
]


def table(rows: list[dict[str, Any]]) -> str:
    """The arms' table, then each arm's throughput ratio to the first."""
    lines = [columns_table(COLUMNS, rows), ""]
    for q in ratios(rows):
        lines.append(
            f"throughput ratio {q['mode']} / {q['over']} (hog {q['hog']}): {q['ratio']:.2f}"
        )
    return "\n".join(lines).rstrip()


def plot(modes: list[dict[str, Any]], n: int) -> str:
    """SVG: throughput per arm, the worst unchanged-code deviation from 1.00 and the worst
    reference deviation from its median (target 5%)."""
    names = {"1": "1 worker", "2p": "2 pinned", "2r": "2 Ray actors"}

    def label(m: dict[str, Any]) -> str:
        return names.get(m["mode"], m["mode"]) + (" + hog" if m["hog"] else "")

    Bar = tuple[str, float, float | None, str]
    thr: list[Bar] = [(label(m), float(m["evals_per_min"]), None, "") for m in modes]
    dev: list[Bar] = []
    ref: list[Bar] = []
    for m in modes:
        worst = max((abs(s - 1) for s in m["noop_range"] or []), default=0.0) * 100
        dev.append((label(m), worst, None, "over 5%" if worst > 5 else ""))
        rdev = (m["ref_max_dev"] or 0.0) * 100
        ref.append((label(m), rdev, None, "over 5%" if rdev > 5 else ""))
    charts = [
        hbar_chart(thr, title=f"evaluations per minute ({n} evaluations)", unit=""),
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


def plot_results(data: dict[str, Any]) -> str:
    """:func:`plot` of a results.json (``rows``, ``config.n``) or of an older
    ``benchmarks/eval_workers.py`` JSON (``modes``, ``n``)."""
    if "rows" in data:
        return plot(data["rows"], int(data["config"]["n"]))
    return plot(data["modes"], int(data["n"]))


__all__ = ["parse_mode", "plot", "plot_results", "requests", "run_eval_bench", "table"]
