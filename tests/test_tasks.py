"""The task loader and the bundled ``perf-lite`` dataset."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agentfleet.tasks import Task, TaskNotFound, bundled_datasets, get_task, load_dataset
from agentfleet.tasks.task import BUNDLED_DIR

PERF_LITE = load_dataset("perf-lite")
ALL_TASKS = PERF_LITE.tasks()


def _patched_paths(patch: str) -> list[str]:
    return re.findall(r"^diff --git a/(\S+) b/\S+$", patch, flags=re.MULTILINE)


def test_perf_lite_is_bundled_with_both_splits() -> None:
    assert "perf-lite" in bundled_datasets()
    assert PERF_LITE.name == "perf-lite"
    assert PERF_LITE.description
    assert len(PERF_LITE.task_ids("test")) >= 8
    assert len(PERF_LITE.task_ids("train")) >= 2
    assert not set(PERF_LITE.task_ids("test")) & set(PERF_LITE.task_ids("train"))
    assert len(PERF_LITE.task_ids()) == len(ALL_TASKS) >= 10


def test_task_kinds_are_all_different() -> None:
    kinds = [task.kind for task in ALL_TASKS]
    assert all(kinds)
    assert len(set(kinds)) == len(kinds)


@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: t.id)
def test_every_task_is_complete(task: Task) -> None:
    assert task.dataset == "perf-lite"
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", task.id)
    assert task.prompt.strip() and task.title and task.kind
    assert task.test_cmd.strip() and task.workload_cmd.strip()
    assert 0 < task.timeout_s <= 600
    repo = task.repo_dir
    assert repo.is_dir()
    assert task.test_files, "tests must be protected via test_files"
    for rel in task.test_files:
        assert (repo / rel).exists(), f"{task.id}: missing test file {rel}"
    # Shipped clean: no bytecode caches or git metadata inside the task repo.
    assert not list(repo.rglob("__pycache__"))
    assert not (repo / ".git").exists()
    patch = task.solution_patch
    assert patch.startswith("diff --git a/")
    touched = _patched_paths(patch)
    assert touched
    for rel in touched:
        assert (repo / rel).is_file(), f"{task.id}: patch touches unknown file {rel}"
        for protected in task.test_files:
            assert not (rel == protected or rel.startswith(protected.rstrip("/") + "/"))


def test_get_task_by_dataset_and_id() -> None:
    task_id = PERF_LITE.task_ids("test")[0]
    task = get_task("perf-lite", task_id)
    assert task.id == task_id
    assert task.task_dir == PERF_LITE.path / task_id
    assert [t.id for t in PERF_LITE.tasks("train")] == PERF_LITE.task_ids("train")


def test_unknown_dataset_split_and_task() -> None:
    with pytest.raises(TaskNotFound, match=r"unknown dataset 'no-such-dataset'.*perf-lite"):
        load_dataset("no-such-dataset")
    with pytest.raises(TaskNotFound, match=r"dataset 'perf-lite' has no split 'dev'.*test"):
        PERF_LITE.task_ids("dev")
    with pytest.raises(TaskNotFound, match=r"dataset 'perf-lite' has no task 'no-such-task'"):
        get_task("perf-lite", "no-such-task")


def _write_custom_dataset(root: Path) -> Path:
    ds = root / "my-set"
    (ds / "slow-sum" / "repo" / "tests").mkdir(parents=True)
    (ds / "dataset.yaml").write_text(
        "description: my own tasks\nsplits:\n  test: [slow-sum]\n  train: []\n"
    )
    (ds / "slow-sum" / "task.yaml").write_text(
        "prompt: make it faster\n"
        "test_cmd: python3 -m unittest -q\n"
        "workload_cmd: python3 workload.py\n"
        "test_files: [tests]\n"
    )
    (ds / "slow-sum" / "repo" / "tests" / "__init__.py").write_text("")
    return ds


def test_custom_dataset_folder_loads_by_path(tmp_path: Path) -> None:
    ds_dir = _write_custom_dataset(tmp_path)
    ds = load_dataset(str(ds_dir))
    assert ds.name == "my-set"  # defaults to the folder name
    assert ds.path == ds_dir.resolve()
    assert ds.task_ids() == ["slow-sum"]
    assert ds.task_ids("train") == []
    task = ds.task("slow-sum")
    assert task.id == "slow-sum"
    assert task.dataset == "my-set"
    assert task.timeout_s == 120.0
    assert task.title == task.kind == ""
    assert task.test_files == ["tests"]
    assert task.repo_dir == ds_dir.resolve() / "slow-sum" / "repo"
    assert task.solution_patch == ""
    with pytest.raises(TaskNotFound, match="no task 'other'"):
        ds.task("other")


def test_listed_task_without_task_yaml(tmp_path: Path) -> None:
    ds_dir = _write_custom_dataset(tmp_path)
    (ds_dir / "dataset.yaml").write_text("name: broken\nsplits:\n  test: [slow-sum, ghost]\n")
    ds = load_dataset(str(ds_dir))
    assert ds.name == "broken"
    with pytest.raises(TaskNotFound, match=r"no task\.yaml"):
        ds.task("ghost")


def test_bundled_dir_holds_no_bytecode() -> None:
    assert not list((BUNDLED_DIR / "perf-lite").rglob("__pycache__"))


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("task_id", ["dedupe-pairs", "report-buffer"])
def test_reference_patch_applies_and_tests_pass(tmp_path: Path, task_id: str) -> None:
    task = get_task("perf-lite", task_id)
    work = tmp_path / "repo"
    shutil.copytree(task.repo_dir, work)
    _git(work, "init", "-q")
    _git(work, "add", "-A")
    _git(work, "commit", "-q", "-m", "baseline")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")

    def run_tests() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", task.test_cmd],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=task.timeout_s,
        )

    before = run_tests()
    assert before.returncode == 0, before.stderr
    patch = tmp_path / "solution.patch"
    patch.write_text(task.solution_patch)
    _git(work, "apply", "--check", str(patch))
    _git(work, "apply", str(patch))
    after = run_tests()
    assert after.returncode == 0, after.stderr
    assert "OK" in after.stderr


def test_check_problems_name_each_failed_rule() -> None:
    from agentfleet.fleet.check import problems

    good = {"original_tests": "pass", "reference": "ok", "speedup": 3.0, "baseline_s": 0.8}
    assert problems(good) == []
    assert problems({**good, "speedup": 1.6}) == ["reference 1.60x < 2x"]
    assert problems({**good, "baseline_s": 2.5}) == ["baseline 2.50 s outside 0.3-2 s"]
    assert problems({**good, "original_tests": "FAIL (1)", "reference": "incorrect"}) == [
        "original tests fail",
        "reference incorrect",
    ]


def test_tasks_check_cli_measures_the_reference_and_fails_a_bar_it_misses() -> None:
    from typer.testing import CliRunner

    from agentfleet.cli import app

    # segment-memo's reference is far above 2x; no real patch reaches 1000x.
    args = ["tasks", "check", "--task", "segment-memo", "--repeats", "1"]
    res = CliRunner().invoke(app, [*args, "--min-speedup", "1000"])
    assert res.exit_code == 1, res.output
    assert "segment-memo" in res.output and "1000x" in res.output  # the bar it missed
    res = CliRunner().invoke(app, [*args, "--baseline-range", "nonsense"])
    assert res.exit_code == 2 and "MIN,MAX" in res.output
