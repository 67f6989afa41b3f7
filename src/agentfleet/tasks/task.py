"""Tasks and datasets: folders on disk, documented in docs/tasks.md.

Servers load datasets by the name a request gives, but only the bundled ones and those under
the folders their operator named (``roots``, from ``--dataset-root``): :func:`load_dataset`
with ``roots`` resolves symlinks and ``..`` first, then checks containment. Without ``roots``
(the local CLI, the runner) any dataset folder loads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, PrivateAttr, ValidationError

from agentfleet.tasks.model import Task
from agentfleet.tasks.oneline import one_line
from agentfleet.tasks.yamlfile import YamlFileError, read_yaml

BUNDLED_DIR = Path(__file__).parent / "data"
# ``--dataset PROFILE:PATH``: rows of a real benchmark (tasks/profiles/, tasks/rows.py)
ROW_PROFILES = ("gso", "swe-perf", "swefficiency")


class TaskNotFound(LookupError):
    """An unknown dataset, split or task id."""


class DatasetFileError(TaskNotFound):
    """A dataset's file that is missing or wrong (not YAML, a field missing or bad): the
    message is ``PATH: what is wrong``, one line. Loaded for a server (with ``roots``), it
    names no host path: ``dataset 'NAME': t1/task.yaml: what is wrong``, the dataset as the
    request named it and the file in its folder. ``path`` is always the full one."""

    def __init__(self, path: Path, problem: str, shown: str | None = None) -> None:
        super().__init__(f"{shown or path}: {problem}")
        self.path = path
        self.problem = problem


def _shown(path: Path, folder: Path, client: str | None) -> str | None:
    """How an error names ``path``, a file of the dataset in ``folder``: by its path
    (``None``), or for a server's client (``client``: the dataset as its request named it)
    by the dataset and the file's place in its folder."""
    return None if client is None else f"dataset {client!r}: {path.relative_to(folder)}"


class Dataset(BaseModel):
    name: str
    description: str = ""
    path: Path
    splits: dict[str, list[str]]
    # loaded for a server: the name its client gave (its file errors name no host path)
    _client: str | None = PrivateAttr(default=None)

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
        task_dir = self.path / task_id
        # a task folder (or a listed id with ``..``) leading out of the dataset is refused
        if not Path(os.path.realpath(task_dir)).is_relative_to(os.path.realpath(self.path)):
            raise TaskNotFound(f"task {task_id!r} of dataset {self.name!r} is outside its folder")
        repo = task_dir / "repo"
        if repo.is_symlink():
            raise TaskNotFound(
                f"task {task_id!r} of dataset {self.name!r}: its repo is a symlink (refused)"
            )
        if not (task_dir / "task.yaml").is_file():
            meta_path = self.path / "dataset.yaml"
            raise DatasetFileError(
                meta_path,
                f"its splits list task {task_id!r}, but "
                f"{task_dir if self._client is None else task_id} has no task.yaml",
                _shown(meta_path, self.path, self._client),
            )
        return _load_task(
            task_dir, self.name, _shown(task_dir / "task.yaml", self.path, self._client)
        )

    def tasks(self, split: str | None = None) -> list[Task]:
        return [self.task(t) for t in self.task_ids(split)]


class RowsDataset(Dataset):
    """A real benchmark's rows as tasks (one ``test`` split, in the rows' order)."""

    row_tasks: dict[str, Task]

    def task(self, task_id: str) -> Task:
        if task_id not in self.row_tasks:
            raise TaskNotFound(f"dataset {self.name!r} has no task {task_id!r}")
        return self.row_tasks[task_id]


def _rows_dataset(
    name: str,
    profile: str,
    rows_path: Path,
    description: str = "",
    task_dir: Path | None = None,
    *,
    client: str | None = None,
    base: Path | None = None,
) -> RowsDataset:
    """The rows at ``rows_path`` as a dataset. Loaded for a server (``client``: the name its
    request gave), a bad rows file is named by its place in ``base`` (the root or dataset
    folder holding it), not by its host path."""
    from agentfleet.tasks.profiles import ProfileError, rows_to_tasks
    from agentfleet.tasks.rows import RowsError, read_rows

    label = client or name[:200]
    try:
        rows = read_rows(rows_path)
        where = task_dir or (rows_path if rows_path.is_dir() else rows_path.parent)
        tasks = rows_to_tasks(profile, rows, name, where)
    except RowsError as e:
        shown = e.path if client is None or base is None else _place(e.path, base)
        raise DatasetFileError(e.path, e.problem, f"dataset {label!r}: {shown}") from None
    except (ProfileError, OSError) as e:
        raise TaskNotFound(f"dataset {label!r}: {e}") from None
    except (ValueError, TypeError, KeyError, RecursionError) as e:  # content of a wrong shape
        shown = rows_path if client is None or base is None else _place(rows_path, base)
        problem = f"does not fit the {profile} format ({type(e).__name__}: {e})"[:500]
        raise DatasetFileError(rows_path, problem, f"dataset {label!r}: {shown}") from None
    return RowsDataset(
        name=name,
        description=description,
        path=rows_path,
        splits={"test": [t.id for t in tasks]},
        row_tasks={t.id: t for t in tasks},
    )


def _place(path: Path, base: Path) -> str:
    """``path`` within ``base`` (its name alone should it lie elsewhere)."""
    return str(path.relative_to(base)) if path.is_relative_to(base) else path.name


def _find_rows(path: str, roots: tuple[Path, ...] | None) -> tuple[Path, Path | None] | None:
    """The rows file or datasets folder ``path`` (under a root or bundled, with roots), and
    the root or bundled folder holding it (None without roots)."""
    if not path or "\x00" in path:
        return None
    candidates = [Path(path)]
    if roots is not None:
        candidates += [r / path for r in roots if not Path(path).is_absolute()]
    allowed = None if roots is None else (Path(os.path.realpath(BUNDLED_DIR)), *roots)
    for candidate in candidates:
        try:
            real = Path(os.path.realpath(candidate))
            base = None
            if allowed is not None:
                base = next((r for r in allowed if real.is_relative_to(r)), None)
                if base is None:
                    continue  # never read what lies outside the roots
            if real.exists():
                return real, base
        except (OSError, ValueError):
            continue
    return None


def _read_meta(path: Path, shown: str | None) -> dict[str, Any]:
    """A dataset.yaml or task.yaml: a mapping (empty file: empty), else DatasetFileError
    (naming the file as ``shown`` says)."""
    try:
        meta = read_yaml(path)
    except YamlFileError as exc:
        raise DatasetFileError(path, exc.problem, shown) from None
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        problem = f"expected a mapping of fields, not {type(meta).__name__}"
        raise DatasetFileError(path, problem, shown)
    return meta


def _load_task(task_dir: Path, dataset: str, shown: str | None) -> Task:
    meta_path = task_dir / "task.yaml"
    meta = {"id": task_dir.name, **_read_meta(meta_path, shown)}
    try:
        return Task.model_validate({**meta, "dataset": dataset, "task_dir": task_dir})
    except ValidationError as exc:
        raise DatasetFileError(meta_path, one_line(exc), shown) from None


def bundled_datasets() -> list[str]:
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "dataset.yaml").is_file())


def dataset_roots(folders: Iterable[str | Path]) -> tuple[Path, ...]:
    """The operator's dataset roots, resolved (symlinks read); ``ValueError`` names a root
    that is not a folder. Blocking: call before serving, or from a thread."""
    roots: dict[Path, None] = {}
    for folder in folders:
        real = Path(os.path.realpath(folder))
        if not real.is_dir():
            raise ValueError(f"--dataset-root {str(folder)!r} is not a folder")
        roots[real] = None
    return tuple(roots)


def _candidates(name: str, roots: tuple[Path, ...] | None) -> list[Path]:
    """Where ``name`` may be: the path as given, a bundled name, a folder under a root."""
    found = [Path(name)]
    plain = "/" not in name and name not in ("", ".", "..")
    if plain:
        found.append(BUNDLED_DIR / name)
    for root in roots or ():
        if plain and root.name == name:
            found.append(root)  # a root may be a dataset folder itself
        if not Path(name).is_absolute():
            found.append(root / name)
    return found


def _find_dataset(name: str, roots: tuple[Path, ...] | None) -> Path | None:
    if "\x00" in name:
        return None
    allowed = None if roots is None else (Path(os.path.realpath(BUNDLED_DIR)), *roots)
    for candidate in _candidates(name, roots):
        try:
            real = Path(os.path.realpath(candidate))
            if allowed is not None and not any(real.is_relative_to(r) for r in allowed):
                continue  # never read what lies outside the roots
            if (real / "dataset.yaml").is_file():
                return real
        except (OSError, ValueError):  # a name too long, a loop: not a dataset
            continue
    return None


def load_dataset(name_or_path: str, roots: Iterable[str | Path] | None = None) -> Dataset:
    """Load a bundled dataset by name (``perf-lite``) or a dataset folder by path.

    ``roots`` (folders; symlinks read here): only bundled datasets and folders under these
    load (a name is also looked up as ``<root>/<name>``); anything else is
    :class:`TaskNotFound`, with no word on whether the folder exists. None: any folder.
    """
    if roots is None:
        return _load_dataset(name_or_path, None)
    return _load_dataset(name_or_path, tuple(Path(os.path.realpath(r)) for r in roots))


@lru_cache(maxsize=256)  # bounded: a name has many spellings
def _load_dataset(name_or_path: str, roots: tuple[Path, ...] | None) -> Dataset:
    profile, sep, rows_spec = name_or_path.partition(":")
    if sep and profile in ROW_PROFILES:
        found = _find_rows(rows_spec, roots)
        if found is None:
            where = "" if roots is None else " under this server's dataset roots (--dataset-root)"
            raise TaskNotFound(
                f"dataset {name_or_path[:200]!r}: no file or folder {rows_spec[:200]!r}{where}"
            )
        client = None if roots is None else name_or_path[:200]
        return _rows_dataset(name_or_path, profile, found[0], client=client, base=found[1])
    path = _find_dataset(name_or_path, roots)
    if path is None:
        if roots is None:
            where = "a folder with dataset.yaml"
        else:
            where = "a dataset folder under this server's dataset roots (--dataset-root)"
        raise TaskNotFound(
            f"unknown dataset {name_or_path[:200]!r}: not a bundled one "
            f"({', '.join(bundled_datasets())}), nor {where}"
        )
    meta_path = path / "dataset.yaml"
    client = None if roots is None else name_or_path[:200]  # a server's: no host path shown
    shown = _shown(meta_path, path, client)
    meta = {"name": path.name, **_read_meta(meta_path, shown)}
    if "profile" in meta:  # a folder holding a real benchmark's rows (bundled *-mini sets)
        rows = (path / str(meta.get("rows", ""))).resolve()
        if not rows.is_relative_to(path) or not rows.exists():
            problem = f"rows {meta.get('rows')!r}: not in its folder"
            raise DatasetFileError(meta_path, problem, shown)
        description = str(meta.get("description", ""))
        return _rows_dataset(
            str(meta["name"]),
            str(meta["profile"]),
            rows,
            description,
            path,
            client=client,
            base=path,
        )
    try:
        dataset = Dataset.model_validate({**meta, "path": path})
    except ValidationError as exc:
        raise DatasetFileError(meta_path, one_line(exc), shown) from None
    dataset._client = client
    return dataset


def get_task(dataset: str, task_id: str, roots: Iterable[str | Path] | None = None) -> Task:
    return load_dataset(dataset, roots).task(task_id)
