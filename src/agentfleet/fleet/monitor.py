"""Live state of a run (:class:`FleetMonitor`) and its periodic snapshots of the evaluation
queue and the HTTP pool (``pool_stats.jsonl``)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agentfleet.fleet.outcome import TaskOutcome
from agentfleet.fleet.results import result_state
from agentfleet.http import HttpPool, Timeouts

log = logging.getLogger("agentfleet.fleet")


@dataclass
class FleetMonitor:
    """Live state of a run, written on the loop by :func:`run_fleet` / :func:`run_one` and
    read by dashboards (possibly from a refresh thread: plain attributes, copied on read).
    """

    total: int = 0  # tasks of this invocation (not counting skipped ones)
    skipped: int = 0  # already complete (resume)
    done: int = 0
    failed: int = 0
    started_at: float = field(default_factory=time.monotonic)
    running: dict[str, float] = field(default_factory=dict)  # task id -> start (monotonic)
    stage: dict[str, str] = field(default_factory=dict)  # task id -> sandbox|agent|diff|eval
    models: dict[str, Any] = field(default_factory=dict)  # task id -> model (live stats)
    earlier: list[Any] = field(default_factory=list)  # models of tries that started over
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=5))
    eval_queue: dict[str, Any] = field(default_factory=dict)  # /healthz: queued, running
    pool: dict[str, Any] = field(default_factory=dict)  # pool totals + open connections
    samples: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.failed

    def eta_s(self, now: float | None = None) -> float | None:
        """Remaining seconds at the observed throughput (None before the first result)."""
        if not self.finished:
            return None
        elapsed = (now or time.monotonic()) - self.started_at
        return elapsed / self.finished * max(0, self.total - self.finished)

    def model_totals(self) -> dict[str, float]:
        """Summed model stats of running and finished agents (every try's)."""
        calls = prompt = completion = 0
        cost = 0.0
        for model in [*self.earlier, *self.models.values()]:
            stats = getattr(model, "stats", None)
            calls += int(getattr(stats, "calls", 0))
            prompt += int(getattr(stats, "prompt_tokens", 0))
            completion += int(getattr(stats, "completion_tokens", 0))
            cost += float(getattr(stats, "cost", 0.0))
        return {
            "calls": calls,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cost": cost,
        }

    def record(self, outcome: TaskOutcome) -> None:
        self.running.pop(outcome.instance_id, None)
        self.stage.pop(outcome.instance_id, None)
        if result_state(asdict(outcome)) == "failed":
            self.failed += 1
            why = outcome.error or str(outcome.info.get("error", "")) or outcome.exit_status
            self.errors.append(f"{outcome.instance_id}: {why}"[:300])
        else:
            self.done += 1


def _append_line(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line + "\n")


HEALTH_TIMEOUT = Timeouts(total=5, connect=2, sock_read=5)


async def sample(monitor: FleetMonitor, eval_url: str | None, path: Path | None) -> None:
    """One snapshot: the evaluation server's queue (``/healthz``) and the loop pool's
    connection stats, into ``monitor`` and as one line of ``path`` (pool_stats.jsonl)."""
    pool = HttpPool.for_loop()
    if eval_url:
        try:
            resp = await pool.request(
                "GET", f"{eval_url}/healthz", timeout=HEALTH_TIMEOUT, target="monitor"
            )
            if resp.ok:
                monitor.eval_queue = dict(resp.json())
        except Exception as exc:  # a dashboard must never stop the fleet
            monitor.eval_queue = {"error": f"{type(exc).__name__}"}
    stats = pool.stats()
    totals = stats["totals"]
    snap = {
        "open": pool.open_connections(),
        "created": totals["connections_created"],
        "reused": totals["connections_reused"],
        "in_flight": totals["in_flight"],
        "waiting": totals["waiting"],
        "requests": totals["requests"],
        "retries": totals["retries"],
        "errors": totals["errors_total"],
    }
    monitor.pool = snap
    monitor.samples += 1
    if path is not None:
        line = {
            "t": round(time.time(), 3),
            "elapsed_s": round(time.monotonic() - monitor.started_at, 3),
            **snap,
            "limits": stats["limits"],
            "running_agents": len(monitor.running),
            "finished": monitor.finished,
            "eval_queued": monitor.eval_queue.get("queued"),
            "eval_running": monitor.eval_queue.get("running"),
            "eval_workers_busy": monitor.eval_queue.get("workers_busy"),
            "eval_per_minute": monitor.eval_queue.get("throughput_per_minute"),
            "eval_queue_wait_s": monitor.eval_queue.get("queue_wait_mean_s"),
        }
        await asyncio.to_thread(_append_line, path, json.dumps(line))


async def sample_every(monitor: FleetMonitor, eval_url: str, path: Path, every: float) -> None:
    while True:
        try:
            await sample(monitor, eval_url, path)
        except Exception as exc:
            log.debug("sampler: %s", exc)
        await asyncio.sleep(every)
