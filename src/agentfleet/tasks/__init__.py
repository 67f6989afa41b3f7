"""Task and dataset loading; the bundled dataset ``perf-lite``.

Names are imported on first use (PEP 562): ``from agentfleet.tasks import DEFAULT_DATASET``
(what request schemas of the client side need) loads no task loader and no YAML parser.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentfleet._lazy import lazy_exports

if TYPE_CHECKING:
    from agentfleet.tasks.defaults import (
        DEFAULT_DATASET as DEFAULT_DATASET,
        DEFAULT_SPLIT as DEFAULT_SPLIT,
    )
    from agentfleet.tasks.task import (
        Dataset as Dataset,
        DatasetFileError as DatasetFileError,
        Task as Task,
        TaskNotFound as TaskNotFound,
        bundled_datasets as bundled_datasets,
        dataset_roots as dataset_roots,
        get_task as get_task,
        load_dataset as load_dataset,
    )

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("DEFAULT_DATASET", "DEFAULT_SPLIT"), "agentfleet.tasks.defaults"),
    **dict.fromkeys(
        (
            "Dataset",
            "DatasetFileError",
            "Task",
            "TaskNotFound",
            "bundled_datasets",
            "dataset_roots",
            "get_task",
            "load_dataset",
        ),
        "agentfleet.tasks.task",
    ),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
