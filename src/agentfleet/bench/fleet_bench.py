"""``agentfleet bench fleet``: N agents x S steps with a fixed-latency model.

The sandbox server runs in its own process: the real one (process backend: every exec
spawns ``bash -c``) or ``null`` (a stand-in whose execs spawn nothing, to isolate the
runner's plumbing). Each runner runs in its own process (``agentfleet.bench.fleet_client``).
The measured wall time covers the agents' steps only; sandbox creation and deletion are
timed apart (``setup s``/``teardown s``). Ideal = S x delay.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any

from agentfleet.bench.common import (
    Column,
    ServerProcess,
    columns_table,
    confine_modes,
    require,
    run_child,
    run_notes,
    sandbox_server,
)

RUNNERS = ("agentfleet", "threads")
SANDBOXES = ("process", "null")


def predicted_seconds(runner: str, n: int, steps: int, delay: float, workers: int) -> float:
    per_agent = steps * delay
    if runner == "threads":
        return math.ceil(n / workers) * per_agent
    return per_agent


def thread_sample(n: int, steps: int, delay: float, workers: int, max_seconds: float) -> int:
    """Agents to run for the thread runner: whole waves of ``workers`` within the cap."""
    waves = math.ceil(n / workers)
    if waves * steps * delay <= max_seconds:
        return n
    fit = max(1, int(max_seconds // (steps * delay)))
    return min(n, fit * workers)


def run_fleet_bench(
    *,
    n: int,
    steps: int,
    delay: float,
    runners: list[str],
    workers: list[int],
    max_seconds: float,
    confine: str = "auto",
    sandbox: str = "process",
    server_loop: str = "asyncio",
    log: Any = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    for r in runners:
        if r not in RUNNERS:
            raise ValueError(f"unknown runner {r!r} (choose from {', '.join(RUNNERS)})")
    (confine,) = confine_modes(confine, many=False)
    sandboxes = [s.strip() for s in sandbox.split(",") if s.strip()]
    for s in sandboxes:
        if s not in SANDBOXES:
            raise ValueError(f"unknown sandbox server {s!r} (choose from {', '.join(SANDBOXES)})")
    if server_loop not in ("auto", "asyncio", "uvloop"):
        raise ValueError("--server-loop: choose from auto, asyncio, uvloop")
    if "threads" in runners:
        require("requests", "the threads runner")
    ideal = steps * delay
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    plan: list[tuple[str, int]] = []
    for r in runners:
        if r == "threads":
            plan += [("threads", w) for w in dict.fromkeys(workers)]
        else:
            plan.append((r, n))
    for sb in sandboxes:
        server: contextlib.AbstractContextManager[ServerProcess]
        if sb == "process":
            server = sandbox_server(confine, n + 64, server_loop)
        else:
            server = ServerProcess("agentfleet.bench.nullsandbox", ["--loop", server_loop])
        with server as srv:
            confined = srv.info.get("confined") == "1"
            info[f"sandbox_{sb}_confined"] = confined
            for runner, w in plan:
                k = n if runner == "agentfleet" else thread_sample(n, steps, delay, w, max_seconds)
                if log is not None:
                    what = runner if runner == "agentfleet" else f"threads W={w}"
                    log(
                        f"fleet: {what} N={n} S={steps} delay={delay:g}s sandbox={sb}"
                        + (f" (sample of {k} agents)" if k < n else "")
                    )
                cpu0 = srv.cpu_seconds()
                res = run_child(
                    "agentfleet.bench.fleet_client",
                    {
                        "runner": runner,
                        "url": srv.url,
                        "token": srv.token,
                        "n": k,
                        "steps": steps,
                        "delay": delay,
                        "workers": w,
                    },
                )
                server_cpu = srv.cpu_seconds() - cpu0
                extrapolated = k < n
                factor = 1.0
                if extrapolated:
                    factor = math.ceil(n / w) / math.ceil(k / w)
                wall = res["wall_s"] * factor
                waves = f"extrapolated from {k} agents ({math.ceil(k / w)} waves)"
                notes = run_notes(res, waves if extrapolated else "")
                sb_label = "null" if sb == "null" else ("process+bwrap" if confined else "process")
                if server_loop != "asyncio":
                    sb_label += f" [{server_loop} loop]"
                rows.append(
                    {
                        "runner": runner if runner == "agentfleet" else f"threads W={w}",
                        "workers": w,
                        "sandbox": sb_label,
                        "n": n,
                        "agents_run": k,
                        "steps": steps,
                        "delay_s": delay,
                        "extrapolated": extrapolated,
                        "wall_s": wall,
                        "ideal_s": ideal,
                        "wall_over_ideal": wall / ideal if ideal else float("nan"),
                        "steps_per_s": n * steps / wall if wall else float("nan"),
                        "statuses": res["statuses"],
                        "submitted": res["statuses"].get("Submitted", 0),
                        "setup_s": res["setup_s"],
                        "teardown_s": res["teardown_s"],
                        "runner_cpu_s": res["runner_cpu_s"] * factor,
                        "runner_peak_rss_mib": res["runner_peak_rss_mib"],
                        "server_cpu_s": server_cpu * factor,
                        "client_connections_opened": res.get("client_connections_opened"),
                        "note": "; ".join(notes),
                        "measured": res,
                    }
                )
    return rows, info


COLUMNS: list[Column] = [
    ("runner", "runner"),
    ("sandbox server", "sandbox"),
    ("N", "n"),
    ("S", "steps"),
    ("delay s", "delay_s"),
    ("wall s", "wall_s"),
    ("wall/ideal", "wall_over_ideal"),
    ("submitted", lambda r: f"{r['submitted']}/{r['agents_run']}"),
    ("runner CPU s", "runner_cpu_s"),
    ("runner RSS MiB", "runner_peak_rss_mib"),
    ("server CPU s", "server_cpu_s"),
    ("setup s", "setup_s"),
    ("note", "note"),
]


table = functools.partial(columns_table, COLUMNS)
