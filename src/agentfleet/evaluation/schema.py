"""Request and result shapes of an evaluation (the evaluate_info fields)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from agentfleet.tasks import DEFAULT_DATASET, DEFAULT_SPLIT

MAX_PATCH_CHARS = 5_000_000
MAX_LEASE_WAIT_S = 60.0  # a remote worker's long poll for a job (remote.LeaseAsk.wait)


class EvalRequest(BaseModel):
    """The ``evaluate_info`` fields. ``result`` is the patch; without it the evaluator takes
    ``git diff`` of the sandbox ``container_id``."""

    exit_status: str = Field(max_length=200)
    result: str | None = Field(default=None, max_length=MAX_PATCH_CHARS)
    container_id: str | None = Field(default=None, max_length=200)
    instance_id: str = Field(min_length=1, max_length=200)
    dataset_name: str = Field(default=DEFAULT_DATASET, max_length=500)
    split: str = Field(default=DEFAULT_SPLIT, max_length=100)
    idempotency_key: str | None = Field(default=None, max_length=200)


class EvalResult(BaseModel):
    reward: float
    speedup: float
    info: dict[str, Any] = Field(default_factory=dict)

    def as_tuple(self) -> tuple[float, float, dict[str, Any]]:
        return self.reward, self.speedup, self.info
