"""What a run writes per finished task: a line of ``results.jsonl`` and a trajectory."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agentfleet.fleet.outcome import TaskOutcome
from agentfleet.fleet.results import repair_tail, result_state
from agentfleet.fleet.rundir import RunDir
from agentfleet.tasks import Task


class ResultsWriter:
    """Appends one JSON line per finished task (crash-safe) and writes trajectories."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.files = RunDir(run_dir)
        self.results = self.files.results
        self._preds_lock = threading.Lock()  # preds.json: read, change, replace

    def _append(self, line: str) -> None:
        # One write of a whole line, flushed: a crash loses at most the line being written.
        with self.results.open("a") as f:
            f.write(line + "\n")
            f.flush()

    async def prepare(self, config: dict[str, Any]) -> None:
        """Write ``config.json`` (merged on resume); end ``results.jsonl`` with a whole line."""

        def mk() -> None:
            self.files.merge_config(config)
            repair_tail(self.results)  # a crashed run's half line must not swallow ours

        await asyncio.to_thread(mk)

    async def write(self, outcome: TaskOutcome, trajectory: dict[str, Any]) -> None:
        """The task's trajectory, its ``results.jsonl`` line and its ``preds.json`` entry
        (the trajectory's ``info.submission`` and ``info.model``)."""
        record = asdict(outcome)
        record["state"] = result_state(record)
        line = json.dumps(record, default=str)
        path = self.files.trajectory(outcome.instance_id)
        text = json.dumps(trajectory, indent=1, default=str)
        await asyncio.to_thread(path.write_text, text)
        await asyncio.to_thread(self._append, line)
        info = trajectory.get("info") or {}
        patch = info.get("submission")
        model = str(info.get("model") or "")
        await asyncio.to_thread(
            self._add_pred, outcome.instance_id, model, patch if isinstance(patch, str) else None
        )

    def _add_pred(self, instance_id: str, model: str, patch: str | None) -> None:
        with self._preds_lock:
            self.files.add_pred(instance_id, model, patch)


def trajectory(
    task: Task, outcome: TaskOutcome, messages: list[Any], model: Any, patch: str
) -> dict[str, Any]:
    """mini-swe-agent's .traj.json shape."""
    stats = getattr(model, "stats", None)
    return {
        "trajectory_format": "mini-swe-agent-1",
        "instance_id": task.id,
        "info": {
            "exit_status": outcome.exit_status,
            "submission": patch,
            "model_stats": {
                "instance_cost": getattr(stats, "cost", 0.0),
                "api_calls": getattr(stats, "calls", 0),
                "prompt_tokens": getattr(stats, "prompt_tokens", 0),
                "completion_tokens": getattr(stats, "completion_tokens", 0),
                "possibly_billed": getattr(stats, "possibly_billed", 0),
                "possibly_billed_cost": getattr(stats, "possibly_billed_cost", 0.0),
            },
            "model": getattr(model, "name", ""),
            "reward": outcome.reward,
            "speedup": outcome.speedup,
            "attempts": outcome.attempts,
            "evaluation": outcome.info,
        },
        "messages": messages,
    }
