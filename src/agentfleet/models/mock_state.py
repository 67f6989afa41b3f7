"""The mock LLM's state, apart from HTTP: its settings (:class:`MockConfig`), what it saw
(:class:`MockStats`, as JSON and Prometheus text) and its replies (:class:`MockLLM`:
the oracle's next step for the task it recognises, injected errors). The server around it
is :mod:`agentfleet.models.mock_server`."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from fastapi import Request

from agentfleet.models.mock_tasks import UNKNOWN_TASK_REPLY, TaskIndex
from agentfleet.models.mock_tools import is_malformed_reply
from agentfleet.tasks import DEFAULT_DATASET

log = logging.getLogger("agentfleet.models.mock_server")

__all__ = [
    "DEFAULT_MODEL_NAMES",
    "ERROR_KINDS",
    "ErrorKind",
    "LatencyDist",
    "MockConfig",
    "MockLLM",
    "MockStats",
    "content_text",
]

ErrorKind = Literal["429", "500", "drop"]
LatencyDist = Literal["fixed", "uniform", "exponential"]
ERROR_KINDS: tuple[str, ...] = ("429", "500", "drop")
DEFAULT_MODEL_NAMES: tuple[str, ...] = ("mock-oracle",)


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


@dataclass
class MockStats:
    calls: int = 0
    completions: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # injected, by kind
    malformed: Counter[str] = field(default_factory=Counter)  # injected, by kind
    tool_call_replies: int = 0  # completions answered in tool-call mode
    rejected: Counter[str] = field(default_factory=Counter)  # auth, bad_request, context_length
    in_flight: int = 0
    peak_in_flight: int = 0
    clients: set[tuple[str, int]] = field(default_factory=set)
    recognised: Counter[str] = field(default_factory=Counter)  # by task id
    unrecognised: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "completions": self.completions,
            "errors": {kind: self.errors.get(kind, 0) for kind in ERROR_KINDS} | dict(self.errors),
            "errors_total": sum(self.errors.values()),
            "malformed": dict(self.malformed),
            "malformed_total": sum(self.malformed.values()),
            "tool_call_replies": self.tool_call_replies,
            "rejected": dict(self.rejected),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "client_connections": len(self.clients),
            "recognised": dict(self.recognised),
            "unrecognised": self.unrecognised,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "uptime_s": round(time.time() - self.started, 3),
        }


@dataclass
class MockConfig:
    dataset: str | None = DEFAULT_DATASET
    latency: float | tuple[float, float] = 0.0
    latency_dist: LatencyDist | None = None
    error_rate: float = 0.0
    error_kinds: tuple[str, ...] = ERROR_KINDS
    malformed_rate: float = 0.0  # tool-call mode: share of replies with a malformed call
    seed: int | None = None
    retry_after: float = 0.0
    cost_per_call: float | None = None
    report_usage: bool = True
    require_key: str | None = None
    context_limit_words: int | None = None
    model_names: tuple[str, ...] = DEFAULT_MODEL_NAMES
    stall_calls: int = 0  # the first chat calls that stall ``stall_s`` before answering
    stall_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("error_rate", "malformed_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        self.error_kinds = tuple(str(k) for k in self.error_kinds)
        unknown = set(self.error_kinds) - set(ERROR_KINDS)
        if unknown or not self.error_kinds:
            raise ValueError(
                f"error kinds must be a non-empty subset of {ERROR_KINDS}, got {self.error_kinds}"
            )
        if isinstance(self.latency, list | tuple):
            lo, hi = (float(x) for x in self.latency)
            if lo < 0 or hi < lo:
                raise ValueError(f"latency range must be 0 <= low <= high, got {self.latency}")
            self.latency = (lo, hi)
            self.latency_dist = self.latency_dist or "uniform"
        else:
            if self.latency < 0:
                raise ValueError(f"latency must be >= 0, got {self.latency}")
            self.latency = float(self.latency)
            self.latency_dist = self.latency_dist or "fixed"
        if self.latency_dist not in ("fixed", "uniform", "exponential"):
            raise ValueError(f"unknown latency distribution {self.latency_dist!r}")

    def sample_latency(self, rng: random.Random) -> float:
        """fixed: the latency (a range: its low end); uniform: within the range, or
        [0, 2*latency] for one number; exponential: mean = the latency (or the range's mid)."""
        lat = self.latency
        lo, hi = lat if isinstance(lat, tuple) else (lat, lat)
        if self.latency_dist == "uniform":
            if not isinstance(lat, tuple):
                lo, hi = 0.0, 2 * lat
            return rng.uniform(lo, hi)
        if self.latency_dist == "exponential":
            mean = (lo + hi) / 2
            return rng.expovariate(1.0 / mean) if mean > 0 else 0.0
        return lo


class MockLLM:
    """The mock's state and answers; ``app.state.mock`` in the app."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.index = TaskIndex()
        self.stats = MockStats()
        self.loaded = False

    def load_sync(self) -> None:
        """Load the dataset now (blocking: outside the event loop), failing on a bad one."""
        self.index = TaskIndex.load(self.config.dataset)
        self.loaded = True

    async def load(self) -> None:
        if self.loaded:
            return
        self.index = await asyncio.to_thread(TaskIndex.load, self.config.dataset)
        self.loaded = True
        log.info("mock LLM: %d task(s) from dataset %r", len(self.index.tasks), self.config.dataset)

    def reset_stats(self) -> None:
        in_flight = self.stats.in_flight
        self.stats = MockStats(in_flight=in_flight, peak_in_flight=in_flight)

    def authorised(self, request: Request) -> bool:
        key = self.config.require_key
        return key is None or request.headers.get("authorization") == f"Bearer {key}"

    def pick_error(self) -> str | None:
        if self.config.error_rate > 0 and self.rng.random() < self.config.error_rate:
            return self.rng.choice(self.config.error_kinds)
        return None

    def answer(self, messages: list[dict[str, Any]]) -> tuple[str, str | None]:
        """(reply, task id or None) for the conversation."""
        text = "\n".join(content_text(m.get("content")) for m in messages if isinstance(m, dict))
        task = self.index.recognise(text)
        if task is None:
            self.stats.unrecognised += 1
            return UNKNOWN_TASK_REPLY, None
        step = sum(  # replies whose tool calls were malformed did not make a step
            1
            for m in messages
            if isinstance(m, dict) and m.get("role") == "assistant" and not is_malformed_reply(m)
        )
        self.stats.recognised[task.id] += 1
        return task.replies[min(step, len(task.replies) - 1)], task.id

    def metrics_text(self) -> str:
        s = self.stats
        lines = [
            "# HELP agentfleet_mock_llm_requests_total Chat completion requests received.",
            "# TYPE agentfleet_mock_llm_requests_total counter",
            f"agentfleet_mock_llm_requests_total {s.calls}",
            "# HELP agentfleet_mock_llm_completions_total Chat completions answered.",
            "# TYPE agentfleet_mock_llm_completions_total counter",
            f"agentfleet_mock_llm_completions_total {s.completions}",
            "# HELP agentfleet_mock_llm_injected_errors_total Errors injected, by kind.",
            "# TYPE agentfleet_mock_llm_injected_errors_total counter",
        ]
        for kind in sorted(set(ERROR_KINDS) | set(s.errors)):
            lines.append(
                f'agentfleet_mock_llm_injected_errors_total{{kind="{kind}"}} {s.errors[kind]}'
            )
        lines += [
            "# HELP agentfleet_mock_llm_rejected_total Requests rejected, by reason.",
            "# TYPE agentfleet_mock_llm_rejected_total counter",
        ]
        for reason in sorted({"auth", "bad_request", "context_length"} | set(s.rejected)):
            lines.append(
                f'agentfleet_mock_llm_rejected_total{{reason="{reason}"}} {s.rejected[reason]}'
            )
        lines += [
            "# HELP agentfleet_mock_llm_in_flight Chat requests being served.",
            "# TYPE agentfleet_mock_llm_in_flight gauge",
            f"agentfleet_mock_llm_in_flight {s.in_flight}",
            "# HELP agentfleet_mock_llm_peak_in_flight Most chat requests served at once.",
            "# TYPE agentfleet_mock_llm_peak_in_flight gauge",
            f"agentfleet_mock_llm_peak_in_flight {s.peak_in_flight}",
            "# HELP agentfleet_mock_llm_client_connections Distinct client connections seen.",
            "# TYPE agentfleet_mock_llm_client_connections gauge",
            f"agentfleet_mock_llm_client_connections {len(s.clients)}",
            "# HELP agentfleet_mock_llm_tokens_total Tokens (words) reported in usage.",
            "# TYPE agentfleet_mock_llm_tokens_total counter",
            f'agentfleet_mock_llm_tokens_total{{type="prompt"}} {s.prompt_tokens}',
            f'agentfleet_mock_llm_tokens_total{{type="completion"}} {s.completion_tokens}',
        ]
        return "\n".join(lines) + "\n"
