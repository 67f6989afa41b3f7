"""Task and dataset loading; the bundled dataset ``perf-lite``.

Names are imported on first use (PEP 562): ``from agentfleet.tasks import DEFAULT_DATASET``
(what request schemas of the client side need) loads no task loader and no YAML parser.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentfleet._lazy import lazy_exports

_TASK = "agentfleet.tasks.task"
_DEFAULTS = "agentfleet.tasks.defaults"
_EXPORTS: dict[str, str] = {
    "DEFAULT_DATASET": _DEFAULTS,
    "DEFAULT_SPLIT": _DEFAULTS,
    "Dataset": _TASK,
    "Task": _TASK,
    "TaskNotFound": _TASK,
    "bundled_datasets": _TASK,
    "get_task": _TASK,
    "load_dataset": _TASK,
}

__all__ = [
    "DEFAULT_DATASET",
    "DEFAULT_SPLIT",
    "Dataset",
    "Task",
    "TaskNotFound",
    "bundled_datasets",
    "get_task",
    "load_dataset",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from agentfleet.tasks.defaults import DEFAULT_DATASET, DEFAULT_SPLIT
    from agentfleet.tasks.task import (
        Dataset,
        Task,
        TaskNotFound,
        bundled_datasets,
        get_task,
        load_dataset,
    )
