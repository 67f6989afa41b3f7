"""The knobs of an evaluation (:class:`EvalConfig`); the defaults are the documented ones
(docs/evaluation.md)."""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from agentfleet.evaluation.reward import RewardConfig
from agentfleet.tasks.defaults import (
    DEFAULT_EARLY_STOP_ROUNDS,
    DEFAULT_EVAL_REPEATS,
    MAX_EVAL_REPEATS,
    MAX_EVAL_WARMUP,
)
from agentfleet.tasks.model import Task

DEFAULT_WARMUP = 1  # untimed runs per arm: the output check alone


class TimingProtocol(NamedTuple):
    """The rounds an evaluation of one task times, and where each number came from
    (``operator``: the evaluation's config; ``task``: the task's benchmark; ``default``)."""

    repeats: int
    warmup: int
    source: dict[str, str]


class EvalConfig(BaseModel):
    """Knobs of an evaluation; the defaults are the documented ones."""

    model_config = ConfigDict(frozen=True)

    # Timed rounds per side, and untimed runs per arm (the output check is one). None: the
    # task's own protocol (a real benchmark's, e.g. SWE-Perf's 20 and 3), capped by
    # max_repeats, else DEFAULT_EVAL_REPEATS / DEFAULT_WARMUP (:meth:`protocol`).
    repeats: int | None = Field(default=None, ge=1, le=MAX_EVAL_REPEATS)
    warmup: int | None = Field(default=None, ge=0, le=MAX_EVAL_WARMUP)
    order: Literal["alternate", "shuffle"] = "alternate"
    # "wall": elapsed time; "cpu": the workload's user+sys CPU time (its waited-for children
    # included), far less sensitive to other jobs on a shared machine.
    clock: Literal["wall", "cpu"] = "cpu"
    # Flag ``clocks_disagree`` when the cpu and wall speedups differ by more than this factor
    # (e.g. work moved to a background process the cpu clock does not see).
    clock_mismatch_factor: float = Field(default=1.5, gt=1.0)
    max_plausible_speedup: float = Field(default=10.0, gt=1.0)
    noise_threshold: float = Field(default=0.05, ge=0.0)
    bootstrap_resamples: int = Field(default=1000, ge=1, le=100_000)
    seed: int = 0
    reward: RewardConfig = Field(default_factory=RewardConfig)
    reference: bool = False  # also time the task's reference solution
    test_timeout: float | None = Field(default=None, gt=0)  # overrides task.timeout_s
    workload_timeout: float | None = Field(default=None, gt=0)  # per run; task.timeout_s
    timing_concurrency: int | None = Field(default=None, ge=1)  # timing phases at once
    # Adaptive repeats: rounds are added (2 at a time) until the bootstrap interval's width
    # is under target_ci x the speedup, or max_repeats rounds ran (rounds.py).
    target_ci: float | None = Field(default=None, gt=0.0, lt=1.0)
    max_repeats: int = Field(default=20, ge=1, le=MAX_EVAL_REPEATS)  # also caps a task's own
    # Early stop: from this many rounds on, stop before ``repeats`` once the reward cannot
    # change (rounds.py); None: always ``repeats``. Off with target_ci, a reference arm
    # or a real benchmark's task (their figures need every round).
    early_stop_rounds: int | None = Field(
        default=DEFAULT_EARLY_STOP_ROUNDS, ge=2, le=MAX_EVAL_REPEATS
    )
    drop_outliers: bool = True  # the outlier rule of rounds.py (from 5 rounds on)
    python: str = "python3"  # interpreter inside the sandbox for the timer
    # memory limit (MB) of the evaluation sandboxes of a real benchmark's tasks, by benchmark
    # (SWE-Perf's harness gives its containers 16 GB); unset: the sandbox server's default
    memory_mb: dict[str, int] = Field(default_factory=dict)

    def protocol(self, task: Task) -> TimingProtocol:
        """The rounds to time ``task`` with: the operator's ``repeats`` / ``warmup`` when
        set, else the task's own (its benchmark's; repeats at most ``max_repeats``, so a
        dataset never raises them past the server's cap), else the defaults."""
        source: dict[str, str] = {}
        if self.repeats is not None:
            repeats, source["repeats"] = self.repeats, "operator"
        elif task.repeats is not None:
            repeats, source["repeats"] = min(task.repeats, self.max_repeats), "task"
        else:
            repeats, source["repeats"] = DEFAULT_EVAL_REPEATS, "default"
        if self.warmup is not None:
            warmup, source["warmup"] = self.warmup, "operator"
        elif task.warmup is not None:
            warmup, source["warmup"] = task.warmup, "task"
        else:
            warmup, source["warmup"] = DEFAULT_WARMUP, "default"
        return TimingProtocol(repeats, warmup, source)


__all__ = ["DEFAULT_WARMUP", "EvalConfig", "TimingProtocol"]
