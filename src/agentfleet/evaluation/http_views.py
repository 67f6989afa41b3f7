"""What the evaluation server answers about a job (:func:`job_view`, the blocking form's
:func:`result_view`) and how it reads ``Prefer: wait=N`` (:func:`prefer_wait`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agentfleet.evaluation.store import FAILED, JobRecord


def prefer_wait(values: Sequence[str]) -> float | None:
    """The ``wait`` preference of ``Prefer`` header values (RFC 7240: ``wait=10``, among
    other preferences, comma separated, parameters after ``;``); None when absent or not a
    number >= 0 (a preference the server cannot read is ignored, never an error)."""
    for value in values:
        for pref in value.split(","):
            name, _, arg = pref.split(";", 1)[0].partition("=")
            if name.strip().lower() != "wait":
                continue
            try:
                seconds = float(arg.strip().strip('"'))
            except ValueError:
                return None
            return seconds if seconds >= 0 and seconds == seconds else None
    return None


def job_view(job: JobRecord) -> dict[str, Any]:
    result = job.result or {}
    return {
        "job_id": job.id,
        "status": job.status,
        "reward": result.get("reward"),
        "speedup": result.get("speedup"),
        "info": result.get("info"),
        "error": job.error,
        "attempts": job.attempts,
        "instance_id": job.request.get("instance_id"),
    }


def result_view(job: JobRecord) -> dict[str, Any]:
    result = job.result or {"reward": 0.0, "speedup": 0.0, "info": {}}
    info = dict(result.get("info") or {})
    if job.status == FAILED:
        info.setdefault("error", job.error)
        info["status"] = FAILED
    return {
        "reward": result.get("reward", 0.0),
        "speedup": result.get("speedup", 0.0),
        "info": info,
    }


__all__ = ["job_view", "prefer_wait", "result_view"]
