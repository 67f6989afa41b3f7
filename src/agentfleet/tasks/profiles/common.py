"""What the benchmark profiles share: field checks, image choice, commands."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agentfleet.tasks.model import Benchmark, Task

Row = dict[str, Any]
WORKDIR = "/testbed"  # where every benchmark's image holds the repository

# SWE-bench's own fields, shared by SWE-Perf and SWE-fficiency rows
SWE_BENCH_FIELDS = frozenset(
    {
        "instance_id",
        "repo",
        "base_commit",
        "patch",
        "test_patch",
        "problem_statement",
        "hints_text",
        "created_at",
        "version",
        "environment_setup_commit",
        "FAIL_TO_PASS",
        "PASS_TO_PASS",
        "image_name",
        "docker_image",
    }
)
# SWE-bench images: the repository's conda environment
CONDA_TESTBED = "source /opt/miniconda3/bin/activate testbed"
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ProfileError(ValueError):
    """A row that does not fit its benchmark's format."""


def check_fields(row: Row, benchmark: str, required: Iterable[str], optional: Iterable[str]) -> str:
    """The row's instance id; ``ProfileError`` names the row and each missing or unknown field."""
    iid = str(row.get("instance_id", "?"))
    if not _SAFE_ID.fullmatch(iid) or ".." in iid:
        raise ProfileError(f"{benchmark} row {iid!r}: instance_id must be [A-Za-z0-9._-]+")
    required = set(required)
    missing = sorted(f for f in required if row.get(f) in (None, ""))
    unknown = sorted(set(row) - required - set(optional))
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unknown:
        problems.append(f"unknown field(s) {', '.join(unknown)}")
    if problems:
        raise ProfileError(f"{benchmark} row {iid!r}: {'; '.join(problems)}")
    return iid


def as_list(row: Row, field: str, iid: str, benchmark: str) -> list[str]:
    """A list of strings; SWE-bench rows often hold lists as JSON text."""
    value = row.get(field)
    if value in (None, ""):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProfileError(f"{benchmark} row {iid!r}: {field} must be a list of strings")
    return list(value)


def pick_image(row: Row, rule: str) -> str:
    """mini-swe-agent's order: ``image_name``, ``docker_image``, then the benchmark's rule."""
    for field in ("image_name", "docker_image"):
        value = row.get(field)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return rule


def swebench_image(iid: str) -> str:
    """SWE-bench's naming rule (its Docker Hub namespace spells ``__`` as ``_1776_``)."""
    return f"docker.io/swebench/sweb.eval.x86_64.{iid.replace('__', '_1776_').lower()}:latest"


def heredoc_python(script: str, tag: str, args: str = "") -> str:
    """``python - ARGS <<'TAG'`` running ``script`` (a tag the script does not contain)."""
    while tag in script:
        tag += "_"
    head = " ".join(p for p in ("python -", args) if p)
    return f"{head} <<'{tag}'\n{script.rstrip()}\n{tag}"


def test_paths(node_ids: Iterable[str]) -> list[str]:
    """The files of pytest node ids (``tests/test_x.py::test_y`` -> ``tests/test_x.py``)."""
    return list(dict.fromkeys(n.split("::", 1)[0] for n in node_ids if n))


def image_task(
    row: Row,
    iid: str,
    dataset: str,
    where: Path,
    *,
    benchmark: Benchmark,
    image: str,
    env_activate: str,
    gold: str,
    fields: dict[str, Any],
    **task: Any,
) -> Task:
    """A row's task with what every benchmark's shares: the id, the image (``image``: the
    benchmark's naming rule, :func:`pick_image`), ``/testbed``, the gold patch, the repo
    and base commit among ``benchmark_fields`` (before ``fields``); ``task``: the rest."""
    task.setdefault("title", str(row["repo"]))
    return Task(
        id=iid,
        dataset=dataset,
        kind=benchmark,
        task_dir=where,
        image=pick_image(row, image),
        workdir=WORKDIR,
        env_activate=env_activate,
        gold_patch=gold,
        benchmark=benchmark,
        benchmark_fields={"repo": row["repo"], "base_commit": row["base_commit"], **fields},
        **task,
    )
