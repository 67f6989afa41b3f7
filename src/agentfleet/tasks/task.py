"""Tasks and datasets: folders on disk, documented in docs/tasks.md."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

BUNDLED_DIR = Path(__file__).parent / "data"


class TaskNotFound(LookupError):
    """An unknown dataset, split or task id."""


class Task(BaseModel):
    """One performance task: a repository with a slow spot, its commands and a reference patch."""

    model_config = ConfigDict(frozen=True)

    id: str
    dataset: str
    title: str = ""
    kind: str = ""
    prompt: str
    test_cmd: str
    workload_cmd: str
    test_files: list[str] = Field(default_factory=list)
    timeout_s: float = 120.0
    task_dir: Path

    @property
    def repo_dir(self) -> Path:
        return self.task_dir / "repo"

    @property
    def solution_patch(self) -> str:
        path = self.task_dir / "solution.patch"
        return path.read_text() if path.exists() else ""


class Dataset(BaseModel):
    name: str
    description: str = ""
    path: Path
    splits: dict[str, list[str]]

    def task_ids(self, split: str | None = None) -> list[str]:
        if split is None:
            seen: dict[str, None] = {}
            for ids in self.splits.values():
                seen.update(dict.fromkeys(ids))
            return list(seen)
        if split not in self.splits:
            raise TaskNotFound(
                f"dataset {self.name!r} has no split {split!r} (has: {', '.join(self.splits)})"
            )
        return list(self.splits[split])

    def task(self, task_id: str) -> Task:
        if task_id not in self.task_ids():
            raise TaskNotFound(f"dataset {self.name!r} has no task {task_id!r}")
        return _load_task(self.path / task_id, self.name)

    def tasks(self, split: str | None = None) -> list[Task]:
        return [self.task(t) for t in self.task_ids(split)]


def _load_task(task_dir: Path, dataset: str) -> Task:
    meta_path = task_dir / "task.yaml"
    if not meta_path.is_file():
        raise TaskNotFound(f"no task.yaml in {task_dir}")
    meta = yaml.safe_load(meta_path.read_text()) or {}
    meta.setdefault("id", task_dir.name)
    return Task(dataset=dataset, task_dir=task_dir, **meta)


def bundled_datasets() -> list[str]:
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "dataset.yaml").is_file())


@cache
def load_dataset(name_or_path: str) -> Dataset:
    """Load a bundled dataset by name (``perf-lite``) or any dataset folder by path."""
    path = Path(name_or_path)
    if not (path / "dataset.yaml").is_file():
        path = BUNDLED_DIR / name_or_path
    meta_path = path / "dataset.yaml"
    if not meta_path.is_file():
        raise TaskNotFound(
            f"unknown dataset {name_or_path!r}: not a folder with dataset.yaml, "
            f"nor a bundled one ({', '.join(bundled_datasets())})"
        )
    meta = yaml.safe_load(meta_path.read_text()) or {}
    meta.setdefault("name", path.name)
    return Dataset(path=path.resolve(), **meta)


def get_task(dataset: str, task_id: str) -> Task:
    return load_dataset(dataset).task(task_id)
