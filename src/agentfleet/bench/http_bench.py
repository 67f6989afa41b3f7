"""``agentfleet bench http``: evaluation client patterns against a test-mode server.

The evaluation server runs in its own process (``agentfleet.bench.evalserver``) where every
evaluation takes ``latency`` seconds, and counts the connections it accepts and the
evaluations in flight (``GET /stats``). Each pattern's client runs in a fresh process
(``agentfleet.bench.http_client``) so that its CPU time and peak RSS are its own.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from agentfleet.bench.common import (
    Column,
    ServerProcess,
    columns_table,
    http_json,
    require,
    run_child,
    run_notes,
)
from agentfleet.bench.http_client import PATTERNS

SCENARIOS: dict[str, tuple[int, int]] = {
    # name: (agents, rounds) -- the origin's three tables
    "single": (1, 10),  # one agent's 10 serial requests: 300 s -> 290 s, 10 conns -> 1
    "ten-agents": (10, 1),  # 10 agents: 300 s -> 30 s
    "fifty-evals": (50, 1),  # 50 concurrent evaluations: 1500 s -> 30 s
}
DEFAULT_PATTERNS = ("blocking", "per-call", "threads", "agentfleet", "agentfleet-blocking")
SWEEP_NS = (10, 50, 200, 1000)
REQUESTS_PATTERNS = ("blocking", "threads")  # made with requests (the bench extra)


@dataclass
class HttpCase:
    n: int
    rounds: int
    latency: float
    max_seconds: float


def predicted_seconds(pattern: str, case: HttpCase) -> float:
    """How long a pattern should take: the blocking one serialises every evaluation."""
    if pattern == "blocking":
        return case.n * case.rounds * case.latency
    return case.rounds * case.latency


def sample_size(pattern: str, case: HttpCase) -> int:
    """Agents to actually run: all, unless the pattern's time grows with N and would pass
    ``max_seconds``; then the first k agents, and the row is extrapolated (linear in N)."""
    if pattern != "blocking" or predicted_seconds(pattern, case) <= case.max_seconds:
        return case.n
    per_agent = case.rounds * case.latency
    return max(1, min(case.n, int(case.max_seconds // per_agent)))


def _settle(server: ServerProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_json("GET", server.url + "/stats").get("in_flight", 0) == 0:
            return
        time.sleep(0.1)


def run_pattern(server: ServerProcess, pattern: str, case: HttpCase) -> dict[str, Any]:
    k = sample_size(pattern, case)
    _settle(server)
    http_json("POST", server.url + "/stats/reset")
    server_cpu0 = server.cpu_seconds()
    res = run_child(
        "agentfleet.bench.http_client",
        {"pattern": pattern, "url": server.url, "n": k, "rounds": case.rounds},
    )
    stats = http_json("GET", server.url + "/stats")
    server_cpu = server.cpu_seconds() - server_cpu0
    # our own GET /stats arrived on one more (fresh) connection
    connections = max(0, int(stats.get("connections_seen", 0)) - 1)
    factor = case.n / k
    extrapolated = k < case.n
    ideal = case.rounds * case.latency
    wall = res["wall_s"] * factor
    row: dict[str, Any] = {
        "pattern": pattern,
        "n": case.n,
        "rounds": case.rounds,
        "latency_s": case.latency,
        "agents_run": k,
        "extrapolated": extrapolated,
        "wall_s": wall,
        "ideal_s": ideal,
        "wall_over_ideal": wall / ideal if ideal else float("nan"),
        "evals_per_s": case.n * case.rounds / wall if wall else float("nan"),
        "connections": round(connections * factor),
        "peak_in_flight": stats.get("peak_in_flight"),
        "completed": stats.get("completed"),
        "errors": res["errors"],
        "error_kinds": res["error_kinds"],
        "client_cpu_s": res["client_cpu_s"] * factor,
        "client_peak_rss_mib": res["client_peak_rss_mib"],
        "server_cpu_s": server_cpu * factor,
        "measured": {
            "wall_s": res["wall_s"],
            "connections": connections,
            "client_cpu_s": res["client_cpu_s"],
            "server_cpu_s": server_cpu,
            "ok": res["ok"],
        },
    }
    for key in ("pool_limits", "client_connections_opened", "client_connections_reused"):
        if key in res:
            row[key] = res[key]
    notes = run_notes(res, f"extrapolated from {k} agents x{factor:.0f}" if extrapolated else "")
    row["note"] = "; ".join(notes)
    return row


def run_http_bench(
    cases: list[HttpCase], patterns: list[str], *, log: Any = None
) -> list[dict[str, Any]]:
    for p in patterns:
        if p not in PATTERNS:
            raise ValueError(f"unknown pattern {p!r} (choose from {', '.join(PATTERNS)})")
    needs = [p for p in patterns if p in REQUESTS_PATTERNS]
    if needs:
        require("requests", f"the {', '.join(needs)} pattern{'s' if len(needs) > 1 else ''}")
    latencies = {c.latency for c in cases}
    rows: list[dict[str, Any]] = []
    for latency in sorted(latencies):
        with ServerProcess("agentfleet.bench.evalserver", ["--latency", f"{latency:g}"]) as srv:
            for case in (c for c in cases if c.latency == latency):
                for pattern in patterns:
                    if log is not None:
                        k = sample_size(pattern, case)
                        log(
                            f"http: {pattern} N={case.n} R={case.rounds} L={latency:g}s"
                            + (f" (sample of {k} agents)" if k < case.n else "")
                        )
                    rows.append(run_pattern(srv, pattern, case))
    return rows


COLUMNS: list[Column] = [
    ("pattern", "pattern"),
    ("N", "n"),
    ("R", "rounds"),
    ("wall s", "wall_s"),
    ("wall/ideal", "wall_over_ideal"),
    ("evals/s", "evals_per_s"),
    ("conns (server)", "connections"),
    ("peak in flight", "peak_in_flight"),
    ("errors", "errors"),
    ("client CPU s", "client_cpu_s"),
    ("client RSS MiB", "client_peak_rss_mib"),
    ("server CPU s", "server_cpu_s"),
    ("note", "note"),
]


table = functools.partial(columns_table, COLUMNS)


def plot_sweep(rows: list[dict[str, Any]], path: Any) -> str | None:
    """wall/ideal and server-side connections vs N, one line per pattern. Returns an error
    message instead of raising when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install 'agentfleet[bench]')"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    patterns = list(dict.fromkeys(r["pattern"] for r in rows))
    markers = "osD^v<>"
    styles = ["-", "--", "-.", ":"]
    for i, p in enumerate(patterns):
        pts = sorted(((r["n"], r) for r in rows if r["pattern"] == p), key=lambda t: t[0])
        ns = [n for n, _ in pts]
        style = {
            "marker": markers[i % len(markers)],
            "linestyle": styles[i % len(styles)],
            "alpha": 0.85,
            "label": p,
        }
        ax1.plot(ns, [r["wall_over_ideal"] for _, r in pts], **style)
        ax2.plot(ns, [max(1, r["connections"]) for _, r in pts], **style)
        for n, r in pts:
            if r["extrapolated"]:
                ax1.annotate("extrap.", (n, r["wall_over_ideal"]), fontsize=7)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("agents N")
        ax.grid(True, which="both", alpha=0.3)
    lat = rows[0]["latency_s"] if rows else 1
    rounds = rows[0]["rounds"] if rows else 1
    ax1.set_ylabel("wall / ideal  (ideal = R x latency)")
    ax1.set_title(f"wall / ideal, latency {lat:g} s, R={rounds}")
    ax2.set_ylabel("TCP connections accepted by the server")
    ax2.set_title("connections opened")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
