"""``agentfleet bench sandbox``: concurrent and sequential execs over HTTP vs bare processes.

The sandbox server (process backend) runs in its own process
(``agentfleet.bench.sandboxserver``); the client in another (``agentfleet.bench.sandbox_client``).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from agentfleet.bench.common import ServerProcess, markdown_table, run_child, sandbox_server

CONFINE_CHOICES = ("auto", "yes", "no")


def docker_backend_available() -> bool:
    return importlib.util.find_spec("agentfleet.sandbox.docker") is not None


def run_sandbox_bench(
    *,
    n: int,
    seq: int,
    sleep_s: float,
    backend: str = "process",
    confine: str = "auto",
    null: bool = True,
    server_loop: str = "auto",
    log: Any = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    confines = [c.strip() for c in confine.split(",") if c.strip()]
    for c in confines:
        if c not in CONFINE_CHOICES:
            raise ValueError(f"--confine: choose from {', '.join(CONFINE_CHOICES)}")
    if server_loop not in ("auto", "asyncio", "uvloop"):
        raise ValueError("--server-loop: choose from auto, asyncio, uvloop")
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    if backend == "docker" or backend == "all":
        notes.append(
            "docker: skipped -- agentfleet.sandbox has no docker backend yet"
            if not docker_backend_available()
            else "docker: backend present but not wired into this bench yet"
        )
    elif backend != "process":
        raise ValueError(f"unknown backend {backend!r} (process, docker)")
    if backend in ("process", "all"):
        for c in confines:
            with sandbox_server(c, n + 16, server_loop) as srv:
                confined = srv.info.get("confined") == "1"
                if log is not None:
                    log(f"sandbox: process backend (confined={confined}) n={n} seq={seq}")
                cpu0 = srv.cpu_seconds()
                res = run_child(
                    "agentfleet.bench.sandbox_client",
                    {"mode": "http", "url": srv.url, "n": n, "seq": seq, "sleep_s": sleep_s},
                )
                server_cpu = srv.cpu_seconds() - cpu0
            label = "process backend over HTTP" + (" (bwrap)" if confined else " (unconfined)")
            if server_loop != "asyncio":
                label += f" [{server_loop} loop]"
            rows.append(
                {
                    "what": label,
                    "backend": "process",
                    "confined": confined,
                    "server_loop": server_loop,
                    "n": n,
                    "concurrent_wall_s": res["concurrent_wall_s"],
                    "concurrent_errors": res["concurrent_errors"],
                    "rtt_median_ms": res["rtt"]["median_ms"],
                    "rtt_p95_ms": res["rtt"]["p95_ms"],
                    "server_exec_median_ms": res["server_exec"]["median_ms"],
                    "create_s": res["create_s"],
                    "delete_s": res["delete_s"],
                    "client_cpu_s": res["client_cpu_s"],
                    "client_peak_rss_mib": res["client_peak_rss_mib"],
                    "server_cpu_s": server_cpu,
                    "client_connections_opened": res["client_connections_opened"],
                    "pool_limits": res["pool_limits"],
                    "raw": res,
                }
            )
    if null:
        # the same client against a server whose execs spawn nothing: the HTTP hop alone
        with ServerProcess("agentfleet.bench.nullsandbox") as srv:
            if log is not None:
                log(f"sandbox: null sandbox server (no spawn) n={n} seq={seq}")
            cpu0 = srv.cpu_seconds()
            res = run_child(
                "agentfleet.bench.sandbox_client",
                {"mode": "http", "url": srv.url, "n": n, "seq": seq, "sleep_s": sleep_s},
            )
            server_cpu = srv.cpu_seconds() - cpu0
        rows.append(
            {
                "what": "null sandbox server over HTTP (no spawn)",
                "backend": "null",
                "confined": False,
                "n": n,
                "concurrent_wall_s": res["concurrent_wall_s"],
                "concurrent_errors": res["concurrent_errors"],
                "rtt_median_ms": res["rtt"]["median_ms"],
                "rtt_p95_ms": res["rtt"]["p95_ms"],
                "server_exec_median_ms": res["server_exec"]["median_ms"],
                "create_s": res["create_s"],
                "delete_s": res["delete_s"],
                "client_cpu_s": res["client_cpu_s"],
                "client_peak_rss_mib": res["client_peak_rss_mib"],
                "server_cpu_s": server_cpu,
                "client_connections_opened": res["client_connections_opened"],
                "pool_limits": res["pool_limits"],
                "raw": res,
            }
        )
    if log is not None:
        log(f"sandbox: bare subprocess n={n} seq={seq}")
    bare = run_child(
        "agentfleet.bench.sandbox_client",
        {"mode": "bare", "n": n, "seq": seq, "sleep_s": sleep_s},
    )
    for label in ("true", "bash -c true"):
        rows.append(
            {
                "what": f"bare create_subprocess_exec({label!r})",
                "backend": "bare",
                "confined": False,
                "n": n,
                "concurrent_wall_s": bare["concurrent_wall_s"],
                "concurrent_errors": bare["concurrent_errors"],
                "rtt_median_ms": bare[label]["median_ms"],
                "rtt_p95_ms": bare[label]["p95_ms"],
                "server_exec_median_ms": None,
                "create_s": None,
                "delete_s": None,
                "client_cpu_s": bare["client_cpu_s"],
                "client_peak_rss_mib": bare["client_peak_rss_mib"],
                "server_cpu_s": None,
                "client_connections_opened": None,
                "pool_limits": None,
                "raw": bare,
            }
        )
    notes.append(
        f"concurrent: {n} execs of `sleep {sleep_s:g}` at once, one per sandbox; "
        f"round trip: median/p95 of {seq} sequential `true` execs after 10 warm-ups; "
        "the process backend runs commands as `bash -c <command>` (under bwrap when confined); "
        "the null sandbox server answers execs without spawning anything (the HTTP hop alone)."
    )
    return rows, notes


HEADERS = [
    "what",
    "N",
    "N x sleep wall s",
    "errors",
    "true median ms",
    "true p95 ms",
    "server-side exec median ms",
    "create N s",
    "client CPU s",
    "client RSS MiB",
    "server CPU s",
]


def table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        HEADERS,
        [
            [
                r["what"],
                r["n"],
                r["concurrent_wall_s"],
                r["concurrent_errors"],
                r["rtt_median_ms"],
                r["rtt_p95_ms"],
                r["server_exec_median_ms"],
                r["create_s"],
                r["client_cpu_s"],
                r["client_peak_rss_mib"],
                r["server_cpu_s"],
            ]
            for r in rows
        ],
    )
