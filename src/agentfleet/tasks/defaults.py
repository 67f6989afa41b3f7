"""Defaults of the task format and of its evaluation, each written in this one place
(docs/architecture.md)."""

DEFAULT_DATASET = "perf-lite"  # bundled with the package, under tasks/data/
DEFAULT_SPLIT = "test"

# What ``agentfleet tasks check`` asks of a task (docs/tasks.md).
MIN_REFERENCE_SPEEDUP = 2.0  # the reference solution gives at least 2x
BASELINE_RANGE_S = (0.3, 2.0)  # seconds of the workload, timed on the original code

# Timed runs of each side when a task is evaluated (``agentfleet run``, ``serve-eval``,
# ``tasks check``). A low module, so that the fleet and the CLI read it without loading the
# evaluation server.
DEFAULT_EVAL_REPEATS = 5
# rounds after which an evaluation may stop early, its reward decided (evaluation/rounds.py)
DEFAULT_EARLY_STOP_ROUNDS = 3
# Their bounds (EvalConfig, a task's own protocol, the CLI's options): timed rounds per side,
# and untimed runs per arm before them (the output check included).
MAX_EVAL_REPEATS = 100
MAX_EVAL_WARMUP = 20
# The evaluation server's port (``serve-eval``).
DEFAULT_EVAL_PORT = 9528

__all__ = [
    "BASELINE_RANGE_S",
    "DEFAULT_DATASET",
    "DEFAULT_EARLY_STOP_ROUNDS",
    "DEFAULT_EVAL_PORT",
    "DEFAULT_EVAL_REPEATS",
    "DEFAULT_SPLIT",
    "MAX_EVAL_REPEATS",
    "MAX_EVAL_WARMUP",
    "MIN_REFERENCE_SPEEDUP",
]
