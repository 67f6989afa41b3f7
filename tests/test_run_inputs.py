"""``agentfleet run``'s checks before anything starts: a run folder is never written by two
runs, server URLs are URLs, a resume names the file it cannot read. In process (CliRunner):
each case exits 2 with one ``error:`` line and leaves the files as they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentfleet.cli import app


def _refused(args: list[str], *needles: str) -> str:
    out = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert out.exit_code == 2, out.output
    assert "Traceback" not in out.output, out.output
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _a_run(folder: Path) -> dict[str, str]:
    """A run folder as a finished run leaves it (the files that matter here)."""
    (folder / "trajectories").mkdir(parents=True)
    files = {
        "config.json": json.dumps({"dataset": "perf-lite", "task_ids": ["dedupe-pairs"]}),
        "results.jsonl": json.dumps({"instance_id": "dedupe-pairs", "reward": 1.0}) + "\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    return files


@pytest.mark.parametrize("which", ["config.json", "results.jsonl"])
def test_a_run_folder_holding_a_run_is_not_written_again(tmp_path: Path, which: str) -> None:
    """Without --resume, a folder with a run's config or results is refused: a second run
    used to replace config.json while results.jsonl kept the first run's lines."""
    folder = tmp_path / "run"
    files = _a_run(folder)
    other = "results.jsonl" if which == "config.json" else "config.json"
    (folder / other).unlink()
    args = ["run", "--model", "oracle", "--task", "rr-scheduler", "--run-dir", str(folder)]
    _refused(args, f"--run-dir {folder} holds a run already", f"--resume {folder}")
    assert (folder / which).read_text() == files[which]  # untouched
    assert sorted(p.name for p in folder.iterdir()) == sorted([which, "trajectories"])


@pytest.mark.parametrize(
    ("option", "url"),
    [
        ("--eval-url", "notaurl"),
        ("--sandbox-url", "ftp://127.0.0.1:1"),
        ("--model-url", "http://"),
        ("--eval-url", "http://127.0.0.1:99999"),
    ],
)
def test_server_urls_are_checked_first(tmp_path: Path, option: str, url: str) -> None:
    run_dir = tmp_path / "run"
    args = ["run", "--model", "oracle", "--task", "sku-diff", "--run-dir", str(run_dir)]
    _refused([*args, option, url], option, repr(url))
    assert not run_dir.exists()


def test_a_resume_of_a_bad_config_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    _a_run(folder)
    (folder / "config.json").write_text("{not json")
    _refused(["run", "--resume", str(folder)], "cannot resume", str(folder / "config.json"))


def test_a_run_whose_task_failed_exits_1(tmp_path: Path) -> None:
    """A task without a trustworthy score (here the model refuses the key: the agent ends
    with an error at once) makes the run exit 1; its result is kept, as failed."""
    from conftest import served_in_thread

    from agentfleet.models.mock_server import create_mock_llm_app

    run_dir = tmp_path / "run"
    with served_in_thread(create_mock_llm_app(require_key="right-key")) as url:
        args = ["run", "--model", "openai/mock-oracle", "--model-url", f"{url}/v1"]
        args += ["--task", "sku-diff", "--run-dir", str(run_dir), "--progress", "plain"]
        args += ["--sandbox-root", str(tmp_path / "sb")]
        out = CliRunner().invoke(app, args, env={"COLUMNS": "200", "OPENAI_API_KEY": "wrong"})
    assert out.exit_code == 1, out.output
    assert "1 task(s) failed" in out.stderr, out.output
    [line] = (run_dir / "results.jsonl").read_text().splitlines()
    assert json.loads(line)["state"] == "failed"


@pytest.mark.parametrize("command", ["run", "preds"])
def test_an_eval_url_nothing_answers_at_is_refused_before_any_task(
    tmp_path: Path, command: str
) -> None:
    """Evaluations ride over a server restarting for minutes; a wrong --eval-url is said at
    once instead (agents spent on tasks nobody can score, then each task tried again)."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    run = tmp_path / "run"
    if command == "run":
        args = ["run", "--model", "oracle", "--task", "rr-scheduler", "--run-dir", str(run)]
    else:
        preds = tmp_path / "preds.json"
        record = {"instance_id": "rr-scheduler", "model_name_or_path": "x", "model_patch": ""}
        preds.write_text(json.dumps([record]))
        args = ["eval", "preds", str(preds), "-d", "perf-lite", "--run-dir", str(run)]
    _refused([*args, "--eval-url", url], f"--eval-url {url}: no evaluation server answers")
    assert not (run / "results.jsonl").exists() or not (run / "results.jsonl").read_text()
