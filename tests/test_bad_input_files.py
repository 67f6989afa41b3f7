"""Bad files and values given to the CLI end with one line ``error: ...`` naming the file
(or the option) and exit 2, never a traceback: malformed dataset folders, YAML configs,
patches, trajectories, predictions, report paths, URLs and ranges. Nothing here starts a
fleet or a server: each input is refused before."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agentfleet.cli import app
from agentfleet.evaluation.client import EvalClient, EvalRejected
from agentfleet.evaluation.schema import MAX_PATCH_CHARS


def _refused(args: list[str], *needles: str, code: int = 2) -> str:
    """Run the CLI; its one ``error:`` line (checked to hold each needle)."""
    out = CliRunner().invoke(app, args, env={"COLUMNS": "1000"})
    assert out.exit_code == code, (out.output, out.exception)
    assert out.exception is None or isinstance(out.exception, SystemExit), out.exception
    assert "Traceback" not in out.output
    errors = [line for line in out.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# malformed dataset folders -------------------------------------------------------------
GOOD_TASK = "prompt: p\ntest_cmd: 'true'\nworkload_cmd: 'true'\n"
DATASETS: dict[str, tuple[dict[str, str], str, str]] = {
    # case: files, the file named, what is said of it
    "dataset-not-yaml": ({"dataset.yaml": "splits: [t1\n"}, "dataset.yaml", "not valid YAML"),
    "dataset-a-list": ({"dataset.yaml": "- t1\n"}, "dataset.yaml", "expected a mapping"),
    "no-splits": ({"dataset.yaml": "name: x\n"}, "dataset.yaml", "splits: Field required"),
    "split-not-a-list": ({"dataset.yaml": "splits: {test: 3}\n"}, "dataset.yaml", "splits.test"),
    "missing-task-folder": (
        {"dataset.yaml": "splits: {test: [t1]}\n"},
        "dataset.yaml",
        "t1 has no task.yaml",
    ),
    "task-not-yaml": (
        {"dataset.yaml": "splits: {test: [t1]}\n", "t1/task.yaml": "prompt: [x\n"},
        "t1/task.yaml",
        "not valid YAML",
    ),
    "task-not-utf8": (
        {"dataset.yaml": "splits: {test: [t1]}\n", "t1/task.yaml": "\udcff"},
        "t1/task.yaml",
        "not UTF-8",
    ),
    "task-fields-missing": (
        {"dataset.yaml": "splits: {test: [t1]}\n", "t1/task.yaml": "title: t\n"},
        "t1/task.yaml",
        "prompt: Field required; test_cmd: Field required; workload_cmd: Field required",
    ),
    "task-field-bad": (
        {"dataset.yaml": "splits: {test: [t1]}\n", "t1/task.yaml": GOOD_TASK + "timeout_s: x\n"},
        "t1/task.yaml",
        "timeout_s:",
    ),
}


def _dataset(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "ds" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
    return root / "ds"


@pytest.mark.parametrize("command", ["list", "show", "check", "run"])
@pytest.mark.parametrize("case", list(DATASETS))
def test_malformed_dataset(tmp_path: Path, case: str, command: str) -> None:
    files, named, problem = DATASETS[case]
    ds = str(_dataset(tmp_path, files))
    args = {
        "list": ["tasks", "list", "-d", ds],
        "show": ["tasks", "show", "t1", "-d", ds],
        "check": ["tasks", "check", "-d", ds],
        "run": ["run", "-d", ds, "--run-dir", str(tmp_path / "run"), "--progress", "none"],
    }[command]
    line = _refused(args, f"error: {Path(ds, named)}: ", problem)
    assert "pydantic" not in line
    assert not (tmp_path / "run").exists()


def test_a_good_dataset_folder_still_loads(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, {"dataset.yaml": "splits: {test: [t1]}\n", "t1/task.yaml": GOOD_TASK})
    out = CliRunner().invoke(app, ["tasks", "list", "-d", str(ds)], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "t1" in out.output


def test_rows_of_a_wrong_shape_are_one_line(tmp_path: Path) -> None:
    """Rows whose content does not fit their benchmark (a gold speedup that is not a
    number; a datasets folder whose state.json lists a data file without its name) are
    a one-line error naming the file, exit 2 (they were tracebacks, and 500s on a server)."""
    import json

    from agentfleet.tasks.task import BUNDLED_DIR

    good = (BUNDLED_DIR / "swefficiency-mini" / "rows.jsonl").read_text().splitlines()
    row = {**json.loads(good[0]), "speedup": "fast"}
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(row) + "\n")
    _refused(
        ["tasks", "list", "-d", f"swefficiency:{rows}"],
        f"{rows}: does not fit the swefficiency format",
        "could not convert string to float: 'fast'",
    )
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"name": "x.arrow"}]}))
    _refused(["tasks", "list", "-d", f"gso:{folder}"], "does not fit the gso format", "KeyError")


# YAML configs of `run` -------------------------------------------------------------------
def _run(tmp_path: Path, *args: str) -> list[str]:
    return ["run", "--run-dir", str(tmp_path / "run"), "--progress", "none", *args]


def test_scripted_model_not_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "replies.yaml"
    bad.write_text('- "one\n')
    _refused(_run(tmp_path, "--model", f"scripted:{bad}"), f"error: {bad}: not valid YAML")


def test_light_agent_config_not_yaml_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "agent.yaml"
    bad.write_text("step_limit: [3\n")
    line = _refused(_run(tmp_path, "--agent-config", str(bad)), f"error: {bad}: not valid YAML")
    assert "(line 2, column 1)" in line


def test_mini_agent_config_not_yaml(tmp_path: Path) -> None:
    pytest.importorskip("minisweagent")
    bad = tmp_path / "mini.yaml"
    bad.write_text("agent: [\n")
    args = _run(tmp_path, "--agent", "mini", "--agent-config", str(bad))
    _refused(args, f"error: {bad}: not valid YAML")


# eval submit / status ----------------------------------------------------------------------
@pytest.fixture
def patch_file(tmp_path: Path) -> Path:
    path = tmp_path / "fix.patch"
    path.write_text("diff --git a/x b/x\n")
    return path


@pytest.mark.parametrize("url", ["notaurl", "http://127.0.0.1:99999", "ftp://h/", "http://:1"])
def test_eval_bad_url(patch_file: Path, url: str) -> None:
    needle = f"--url must be an http(s) URL such as http://127.0.0.1:9528, not {url!r}"
    _refused(["eval", "submit", "-i", "t", "--patch", str(patch_file), "--url", url], needle)
    _refused(["eval", "status", "job", "--url", url], needle)


def test_eval_submit_patch_not_utf8(tmp_path: Path) -> None:
    patch = tmp_path / "bin.patch"
    patch.write_bytes(b"\xff\xfe diff")
    _refused(["eval", "submit", "-i", "t", "--patch", str(patch)], f"{patch}: not UTF-8 text")


@pytest.mark.parametrize("size", [MAX_PATCH_CHARS + 1, 4 * MAX_PATCH_CHARS + 1])
def test_eval_submit_patch_too_large(tmp_path: Path, size: int) -> None:
    patch = tmp_path / "big.patch"
    with patch.open("wb") as f:  # sparse: NULs, valid UTF-8
        f.truncate(size)
    line = _refused(["eval", "submit", "-i", "t", "--patch", str(patch)], f"{patch}: larger")
    assert str(MAX_PATCH_CHARS) in line


def test_eval_submit_option_too_long(patch_file: Path) -> None:
    args = ["eval", "submit", "-i", "t" * 201, "--patch", str(patch_file)]
    _refused(args, "error: --instance: String should have at most 200 characters")


def test_eval_submit_rejected_is_bad_input(
    patch_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server refusing an unknown task, dataset or split (a 4xx) exits 2 (README)."""

    async def refuse(self: EvalClient, req: Any, **kw: Any) -> str:
        raise EvalRejected(f"dataset 'perf-lite' has no task {req.instance_id!r}", status_code=404)

    monkeypatch.setattr(EvalClient, "submit", refuse)
    args = ["eval", "submit", "-i", "nope", "--patch", str(patch_file), "--url", "http://h:1"]
    _refused(args, "error: dataset 'perf-lite' has no task 'nope'")


# run folders: report, show ---------------------------------------------------------------
@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "trajectories").mkdir(parents=True)
    (run / "results.jsonl").write_text(
        '{"instance_id": "t1", "exit_status": "Submitted", "reward": 0.5, "speedup": 1.5}\n'
    )
    return run


def test_report_output_is_a_folder(run_dir: Path, tmp_path: Path) -> None:
    _refused(["report", str(run_dir), "-o", str(tmp_path)], f"--output {tmp_path}: is a folder")


def test_report_output_cannot_be_written(run_dir: Path, tmp_path: Path) -> None:
    out = run_dir / "results.jsonl" / "report.html"  # under a file
    _refused(["report", str(run_dir), "-o", str(out)], "error: cannot write the report to ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_report_output_not_writable(run_dir: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    out = locked / "r.html"
    _refused(["report", str(run_dir), "-o", str(out)], f"to {out}: Permission denied")


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"{bad", "not JSON: Expecting property name"), (b"\xff{}", "not UTF-8 text")],
)
def test_show_corrupt_trajectory(run_dir: Path, content: bytes, problem: str) -> None:
    traj = run_dir / "trajectories" / "t1.traj.json"
    traj.write_bytes(content)
    _refused(["show", str(run_dir), "t1"], f"error: {traj}: {problem}")


# eval preds, tasks check -------------------------------------------------------------------
def test_eval_preds_not_utf8(tmp_path: Path) -> None:
    preds = tmp_path / "preds.json"
    preds.write_bytes(b'\xff{"a": 1}')
    _refused(["eval", "preds", str(preds)], f"error: {preds}: not UTF-8 text")


@pytest.mark.parametrize("value", ["2,1", "1,1", "0,1", "-1,2", "nan,2", "1,inf"])
def test_tasks_check_baseline_range(value: str) -> None:
    """Refused before any dataset loads or task runs (the unknown task is never reached)."""
    args = ["tasks", "check", "--baseline-range", value, "--task", "nope"]
    _refused(args, f"error: --baseline-range {value}: wants finite seconds, 0 < MIN < MAX")
