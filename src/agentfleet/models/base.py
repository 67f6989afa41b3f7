"""The Model protocol every model (offline or over HTTP) follows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# {"role": ..., "content": ...}; in tool-call mode also "tool_calls" / "tool_call_id"
Message = dict[str, Any]


class ModelError(Exception):
    """The model cannot go on; ``exit_status`` ends the agent with that status."""

    def __init__(self, message: str, exit_status: str = "ModelError") -> None:
        super().__init__(message)
        self.exit_status = exit_status


class LimitReached(ModelError):
    """A cost limit (the agent's or the run's) is reached: the agent ends cleanly with
    ``exit_status`` (``CostLimitExceeded`` / ``RunCostLimitExceeded``), not as a failure."""


@dataclass
class ModelReply:
    content: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    possibly_billed: int = 0  # attempts lost after the request left (the provider may bill)
    possibly_billed_cost: float = 0.0  # their estimated cost (not in ``cost``)
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI's shape, as the model sent them


@dataclass
class ModelStats:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0  # of the replies received
    possibly_billed: int = 0  # attempts lost after their request left
    possibly_billed_cost: float = 0.0  # their estimated cost

    def add(self, reply: ModelReply) -> None:
        self.calls += 1
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        self.cost += reply.cost
        self.possibly_billed += reply.possibly_billed
        self.possibly_billed_cost += reply.possibly_billed_cost

    @property
    def cost_bound(self) -> float:
        """What may have been billed: ``cost`` plus the lost attempts' estimate (what the
        cost limits count)."""
        return self.cost + self.possibly_billed_cost


@runtime_checkable
class Model(Protocol):
    name: str
    stats: ModelStats

    async def query(self, messages: list[Message]) -> ModelReply: ...


@dataclass
class _StatsMixin:
    stats: ModelStats = field(default_factory=ModelStats)
