"""Image tasks (real benchmarks): the Task fields and their defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agentfleet.tasks import Task, load_dataset


def _task(**fields: object) -> Task:
    base: dict[str, object] = {
        "id": "t",
        "dataset": "d",
        "prompt": "p",
        "test_cmd": "true",
        "workload_cmd": "true",
        "task_dir": Path("."),
    }
    return Task.model_validate({**base, **fields})


def test_folder_tasks_keep_their_defaults() -> None:
    task = load_dataset("perf-lite").tasks()[0]
    assert not task.is_image_task
    assert task.image is None and task.workdir is None
    assert task.workload_parser == "wall" and task.benchmark == "perf-lite"
    assert task.env_activate == task.rebuild_cmd == task.gold_patch == ""
    assert task.benchmark_fields == {}
    assert task.solution_patch.startswith("diff --git")


def test_image_task_fields() -> None:
    task = _task(
        image="slimshetty/gso:gso.eval.x86_64.a__b-1",
        env_activate="source /opt/venv/bin/activate",
        rebuild_cmd="make",
        workload_parser="gso",
        gold_patch="diff --git a/x b/x\n",
        benchmark="gso",
        benchmark_fields={"tests": ["t1"], "opt_commit": "abc"},
    )
    assert task.is_image_task
    assert task.workdir == "/testbed"  # the default for an image task
    assert task.solution_patch == "diff --git a/x b/x\n"
    assert _task(image="i", workdir="/src").workdir == "/src"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"workdir": "/testbed"}, "needs an image"),
        ({"image": "i", "workdir": "testbed"}, "not absolute"),
        ({"workload_parser": "cpu"}, "workload_parser"),
        ({"benchmark": "swe-bench"}, "benchmark"),
    ],
)
def test_bad_image_fields_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _task(**fields)
