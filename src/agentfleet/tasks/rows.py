"""Rows of a real benchmark, read offline from the formats they ship in.

A ``.jsonl`` file (one JSON object a line), a ``.json`` file (a list of objects, or
``{"rows": [...]}``), a ``.parquet`` file, or a folder written by Hugging Face
``datasets``' ``save_to_disk`` (Arrow stream files listed in ``state.json``; a
``DatasetDict`` folder: the split asked, default ``test``). Parquet and Arrow need
``pyarrow`` (the ``real`` extra).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Row = dict[str, Any]


class RowsError(ValueError):
    """A rows file that cannot be read, or a row that is not an object."""


def read_rows(path: Path, split: str = "test") -> list[Row]:
    """The rows at ``path`` (blocking: a file read)."""
    if path.is_dir():
        rows = _hf_folder(path, split)
    elif path.suffix == ".jsonl":
        rows = _jsonl(path)
    elif path.suffix == ".json":
        rows = _json(path)
    elif path.suffix == ".parquet":
        rows = _pyarrow().parquet.read_table(path).to_pylist()
    else:
        raise RowsError(f"{path}: expected a .jsonl, .json or .parquet file or a datasets folder")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RowsError(f"{path}: row {i + 1} is not an object")
    return rows


def _jsonl(path: Path) -> list[Row]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise RowsError(f"{path}: line {n} is not JSON: {e.msg}") from None
    return rows


def _json(path: Path) -> list[Row]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RowsError(f"{path}: not JSON: {e.msg} (line {e.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
        data = data["rows"]
    if not isinstance(data, list):
        raise RowsError(f"{path}: expected a list of rows")
    return data


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise RowsError(
            "reading .parquet files and datasets folders needs pyarrow "
            "(pip install 'agentfleet[real]')"
        ) from None
    return pyarrow


def _hf_folder(path: Path, split: str) -> list[Row]:
    if (path / "dataset_dict.json").is_file():  # a DatasetDict: one folder per split
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        if split not in splits:
            raise RowsError(f"{path}: no split {split!r} (has: {', '.join(splits)})")
        path = path / split
    state = path / "state.json"
    if not state.is_file():
        raise RowsError(f"{path}: not a datasets folder (no state.json nor dataset_dict.json)")
    files = [f["filename"] for f in json.loads(state.read_text()).get("_data_files", [])]
    pa = _pyarrow()
    rows: list[Row] = []
    for name in files:
        if "/" in name or name.startswith("."):
            raise RowsError(f"{path}: data file {name!r} outside the folder")
        with pa.memory_map(str(path / name)) as source:
            rows.extend(pa.ipc.open_stream(source).read_all().to_pylist())
    return rows
