"""Defaults of the task format, each written in this one place (docs/architecture.md)."""

DEFAULT_DATASET = "perf-lite"  # bundled with the package, under tasks/data/
DEFAULT_SPLIT = "test"

# What ``agentfleet tasks check`` asks of a task (docs/tasks.md).
MIN_REFERENCE_SPEEDUP = 2.0  # the reference solution gives at least 2x
BASELINE_RANGE_S = (0.3, 2.0)  # seconds of the workload, timed on the original code

__all__ = ["BASELINE_RANGE_S", "DEFAULT_DATASET", "DEFAULT_SPLIT", "MIN_REFERENCE_SPEEDUP"]
