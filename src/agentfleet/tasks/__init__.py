"""Task and dataset loading; the bundled dataset ``perf-lite``."""

from agentfleet.tasks.task import (
    Dataset,
    Task,
    TaskNotFound,
    bundled_datasets,
    dataset_roots,
    get_task,
    load_dataset,
)

__all__ = [
    "Dataset",
    "Task",
    "TaskNotFound",
    "bundled_datasets",
    "dataset_roots",
    "get_task",
    "load_dataset",
]
