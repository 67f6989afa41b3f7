"""Benchmark profiles: one row of GSO, SWE-Perf or SWE-fficiency -> one image :class:`Task`.

Each profile names the fields a row must have and those it may have (anything else is an
error naming the row: a format we do not know is better refused than half read), the
image naming rule of its benchmark, the environment its images activate, and its commands.
The image is picked as mini-swe-agent's SWE-bench runner does: ``image_name``, then
``docker_image``, then the benchmark's rule.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentfleet.tasks.model import Task
from agentfleet.tasks.profiles.common import ProfileError, Row
from agentfleet.tasks.profiles.gso import gso_task
from agentfleet.tasks.profiles.swefficiency import swefficiency_task
from agentfleet.tasks.profiles.sweperf import sweperf_task

Profile = Callable[[Row, str, Path], Task]
PROFILES: dict[str, Profile] = {
    "gso": gso_task,
    "swe-perf": sweperf_task,
    "swefficiency": swefficiency_task,
}

__all__ = ["PROFILES", "Profile", "ProfileError", "Row", "rows_to_tasks"]


def rows_to_tasks(
    profile: str, rows: list[dict[str, Any]], dataset: str, where: Path
) -> list[Task]:
    """Every row as a task (``ProfileError`` names the first bad row, or a repeated id)."""
    if profile not in PROFILES:
        raise ProfileError(f"unknown benchmark profile {profile!r} (known: {', '.join(PROFILES)})")
    tasks: dict[str, Task] = {}
    for n, row in enumerate(rows, 1):
        iid = row.get("instance_id")
        if not isinstance(iid, str) or not iid.strip():
            raise ProfileError(f"{profile} row {n}: no instance_id")
        if iid in tasks:
            raise ProfileError(f"{profile} row {n}: instance_id {iid!r} appears twice")
        tasks[iid] = PROFILES[profile](row, dataset, where)
    return list(tasks.values())
