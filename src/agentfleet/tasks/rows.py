"""Rows of a real benchmark, read offline from the formats they ship in.

A ``.jsonl`` file (one JSON object a line), a ``.json`` file (a list of objects, or
``{"rows": [...]}``), a ``.parquet`` file, or a folder written by Hugging Face
``datasets``' ``save_to_disk`` (Arrow stream files listed in ``state.json``; a
``DatasetDict`` folder: the split asked, default ``test``). Parquet and Arrow need
``pyarrow`` (the ``real`` extra).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentfleet.tasks.oneline import not_utf8

Row = dict[str, Any]


class RowsError(ValueError):
    """A rows file that cannot be read, or a row that is not an object: the message is
    ``PATH: what is wrong``; ``path`` (the file or folder at fault) and ``problem`` apart,
    so that a server can name the file without its host path."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def read_rows(path: Path, split: str = "test") -> list[Row]:
    """The rows at ``path`` (blocking: a file read); :class:`RowsError` otherwise."""
    try:
        if path.is_dir():
            rows = _hf_folder(path, split)
        elif path.suffix == ".jsonl":
            rows = _jsonl(path)
        elif path.suffix == ".json":
            rows = _json(path)
        elif path.suffix == ".parquet":
            rows = _table(path, _pyarrow(path).parquet.read_table)
        else:
            raise RowsError(path, "expected a .jsonl, .json or .parquet file or a datasets folder")
    except OSError as exc:  # open() or a read: the file it names, the reason alone
        where = Path(exc.filename) if exc.filename else path
        raise RowsError(where, f"cannot read: {exc.strerror or type(exc).__name__}") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RowsError(path, f"row {i + 1} is not an object")
    return rows


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RowsError(path, not_utf8(exc)) from None


def _jsonl(path: Path) -> list[Row]:
    rows = []
    for n, line in enumerate(_text(path).splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise RowsError(path, f"line {n} is not JSON: {e.msg}") from None
    return rows


def _json_file(path: Path) -> Any:
    try:
        return json.loads(_text(path))
    except json.JSONDecodeError as e:
        raise RowsError(path, f"not JSON: {e.msg} (line {e.lineno})") from None


def _json(path: Path) -> list[Row]:
    data = _json_file(path)
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
        data = data["rows"]
    if not isinstance(data, list):
        raise RowsError(path, "expected a list of rows")
    return data


def _table(path: Path, read: Callable[[Any], Any]) -> list[Row]:
    """The rows of the table ``read`` makes of the file ``path``, which it gets opened (a
    file object: pyarrow's errors then hold no path); pyarrow's error as :class:`RowsError`."""
    pa = _pyarrow(path)
    with path.open("rb") as source:
        try:
            return list(read(source).to_pylist())
        except pa.ArrowException as exc:
            raise RowsError(path, f"cannot read: {exc}") from None


def _object(path: Path) -> dict[str, Any]:
    """A datasets folder's JSON file: an object."""
    data = _json_file(path)
    if not isinstance(data, dict):
        raise RowsError(path, "expected a JSON object")
    return data


def _pyarrow(path: Path) -> Any:
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise RowsError(
            path,
            "reading .parquet files and datasets folders needs pyarrow "
            "(pip install 'agentfleet[real]')",
        ) from None
    return pyarrow


def _hf_folder(path: Path, split: str) -> list[Row]:
    if (path / "dataset_dict.json").is_file():  # a DatasetDict: one folder per split
        splits = _object(path / "dataset_dict.json").get("splits", [])
        if split not in splits:
            raise RowsError(path, f"no split {split!r} (has: {', '.join(splits)})")
        path = path / split
    state = path / "state.json"
    if not state.is_file():
        raise RowsError(path, "not a datasets folder (no state.json nor dataset_dict.json)")
    files = [f["filename"] for f in _object(state).get("_data_files", [])]
    pa = _pyarrow(path)
    rows: list[Row] = []
    for name in files:
        if "/" in name or name.startswith("."):
            raise RowsError(path, f"data file {name!r} outside the folder")
        rows.extend(_table(path / name, lambda source: pa.ipc.open_stream(source).read_all()))
    return rows
