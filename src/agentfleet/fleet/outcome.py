"""What one task came to (:class:`TaskOutcome`), and the listener that hears of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentfleet.tasks import Task


@dataclass
class TaskOutcome:
    instance_id: str
    exit_status: str
    reward: float = 0.0
    speedup: float = 0.0
    steps: int = 0
    duration_s: float = 0.0
    cost: float = 0.0
    error: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1  # > 1: earlier tries met transport faults (fleet.attempts)


Listener = Callable[[str, Task, TaskOutcome | None], None]
