"""Every numeric operator option of the servers, `run`, `eval preds` and `eval-worker` is
checked for a sane range before anything starts: a one-line reason naming the option, exit
2 (the bounds are the request models' own where one declares them: CreateSandbox's limits,
EvalConfig's repeats, a lease's wait; the machine's CPUs for CPU counts)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentfleet.cli import app
from agentfleet.sandbox.base import MAX_PIDS
from agentfleet.sandbox.cli import serve_settings
from agentfleet.tasks.defaults import MAX_EVAL_REPEATS

CPUS = len(os.sched_getaffinity(0))
TOO_MANY = str(CPUS + 1)


def _refused(args: list[str], *needles: str) -> None:
    out = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert out.exit_code == 2, out.output
    assert "Traceback" not in out.output
    for needle in needles:
        assert needle in out.output, out.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--cpus", "1e12"], "--cpus 1e+12"),
        (["--cpus", TOO_MANY], f"up to this machine's {os.cpu_count()}"),
        (["--memory", "99999999t"], "--memory '99999999t': at most"),
        (["--file-size", "99999999t"], "--file-size '99999999t': at most"),
        (["--pids-limit", str(MAX_PIDS + 1)], f"--pids-limit {MAX_PIDS + 1}"),
        (["--cpu-time", "-1"], "--cpu-time -1"),
        (["--max-execs", "10000000"], "--max-execs 10000000"),
        (["--max-execs-per-sandbox", "0"], "--max-execs-per-sandbox 0"),
        (["--max-sandboxes", "-4"], "--max-sandboxes -4"),
        (["--reap-interval", "1e9"], "--reap-interval 1e+09"),
    ],
)
def test_serve_sandbox(args: list[str], needle: str) -> None:
    _refused(["serve-sandbox", *args], needle)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--cores-per-worker", "4096"], "--cores-per-worker 4096"),
        (["--cores-per-worker", TOO_MANY], f"may use {CPUS} CPU(s)"),
        (["--workers", "10000000"], "'--workers'"),
        (["--workers", "-1"], "'--workers'"),
        (["--repeats", "0"], "'--repeats'"),
        (["--repeats", str(MAX_EVAL_REPEATS + 1)], "'--repeats'"),
        (["--max-repeats", "10000"], "'--max-repeats'"),
        (["--port", "99999"], "'--port'"),
        (["--max-body", str(1 << 40)], "'--max-body'"),
        (["--test-latency", "1e9"], "'--test-latency'"),
        (["--max-attempts", "0"], "'--max-attempts'"),
        (["--ray-workers", "10000000"], "'--ray-workers'"),
    ],
)
def test_serve_eval(args: list[str], needle: str) -> None:
    _refused(["serve-eval", *args], needle)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--eval-repeats", "0"], "'--eval-repeats'"),
        (["--eval-repeats", "10000"], "'--eval-repeats'"),
        (["--workers", "0"], "'--workers'"),
        (["--workers", "1000000000"], "'--workers'"),
        (["--time-limit", "-5"], "'--time-limit'"),
        (["--model-delay", "-1"], "'--model-delay'"),
        (["--step-limit", "0"], "'--step-limit'"),
        (["--task-attempts", "1000"], "'--task-attempts'"),
        (["--backend", "ray", "--shards", "0"], "'--shards'"),
    ],
)
def test_run(args: list[str], needle: str) -> None:
    _refused(["run", *args], needle)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--eval-repeats", "101"], "'--eval-repeats'"),
        (["--eval-repeats", "0"], "'--eval-repeats'"),
        (["--workers", "0"], "'--workers'"),
    ],
)
def test_eval_preds(tmp_path: Path, args: list[str], needle: str) -> None:
    preds = tmp_path / "preds.json"
    preds.write_text("{}")
    _refused(["eval", "preds", str(preds), *args], needle)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--cpus", "0-99999"], "--cpus 0-99999: this process may use CPUs"),
        (["--wait", "61"], "'--wait'"),
        (["--max-jobs", "0"], "'--max-jobs'"),
        (["--test-latency", "-1"], "'--test-latency'"),
    ],
)
def test_eval_worker(args: list[str], needle: str) -> None:
    _refused(["eval-worker", "--server", "http://127.0.0.1:1", *args], needle)


def test_sane_values_still_pass() -> None:
    """The bounds leave every sane setting alone (the machine's CPUs, 0 = no limit)."""
    kw, service = serve_settings(
        "process", cpus=float(os.cpu_count() or 1), memory="16g", pids_limit=MAX_PIDS
    )
    assert kw["cpus"] == os.cpu_count() and kw["memory_mb"] == 16 * 1024
    off, _ = serve_settings("process", cpus=0, memory="0", pids_limit=0, cpu_time=0)
    assert off["cpus"] is off["memory_mb"] is off["pids_limit"] is off["cpu_time_s"] is None
    assert service["max_execs"] >= 1


# --------------------------------------------------------------------------------------
# options checked before the servers start, and the benches' and images' word lists


@pytest.mark.parametrize("port", ["-5", "70000"])
def test_mock_llm_port(port: str) -> None:
    _refused(["mock-llm", "--port", port], "'--port'")


def test_serve_eval_early_stop_rounds() -> None:
    _refused(["serve-eval", "--early-stop-rounds", "1"], "--early-stop-rounds 1: expected 2 to")


def test_serve_eval_ray_workers_need_ray_address(tmp_path: Path) -> None:
    # --db checked later: without this check, the --db one (not a hang serving)
    _refused(["serve-eval", "--ray-workers", "2", "--db", str(tmp_path)], "--ray-workers")


def _not_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n" * 100)
    return path


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (_not_sqlite, "file is not a database"),
        (lambda tmp: tmp, "a folder, not a SQLite file"),
        (lambda tmp: _not_sqlite(tmp) / "jobs.db", "is not a folder"),
    ],
)
def test_serve_eval_db(tmp_path: Path, make: Callable[[Path], Path], needle: str) -> None:
    _refused(["serve-eval", "--test-latency", "0", "--db", str(make(tmp_path))], "--db", needle)


def test_serve_eval_db_unwritable_folder(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes in any folder")
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    _refused(["serve-eval", "--db", str(folder / "jobs.db")], "--db", "cannot write in")


def test_sane_dbs_pass(tmp_path: Path) -> None:
    """A SQLite file, an empty one, one still to make (folders too) pass the check."""
    from agentfleet.evaluation.serve_cli import _check_db

    with contextlib.closing(sqlite3.connect(tmp_path / "jobs.db")) as db:
        db.execute("CREATE TABLE t (x)")
    (tmp_path / "empty.db").touch()
    for name in ("jobs.db", "empty.db", "new/folder/jobs.db"):
        _check_db(tmp_path / name)


@pytest.mark.parametrize("below", ["", "sub"])
def test_serve_sandbox_root_is_a_folder(tmp_path: Path, below: str) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    _refused(["serve-sandbox", "--port", "0", "--root", str(file / below)], "--root", "folder")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["http", "--sweep", "--sweep-ns", "abc"], "--sweep-ns 'abc': expected"),
        (["http", "--sweep-ns", "10,0"], "--sweep-ns '10,0': expected"),
        (["fleet", "--workers", "abc"], "--workers 'abc': expected"),
        (["fleet", "--workers", "0"], "--workers '0': expected"),
        (["fleet", "--max-seconds", "-1"], "'--max-seconds'"),
        (["fleet", "--confine", "maybe"], "--confine 'maybe': expected required | auto | off"),
        (["fleet", "--confine", "off,required"], "--confine 'off,required'"),
        (["sandbox", "--confine", "off,maybe"], "--confine 'off,maybe'"),
    ],
)
def test_bench(tmp_path: Path, args: list[str], needle: str) -> None:
    _refused(["bench", *args, "--out", str(tmp_path / "run")], needle)
    assert not (tmp_path / "run").exists()


def test_bench_confine_words() -> None:
    """The servers' words, a comma list for `bench sandbox`; yes / no still work."""
    from agentfleet.bench.common import confine_modes

    assert confine_modes("no, yes,auto") == ["off", "required", "auto"]
    assert confine_modes("required", many=False) == ["required"]
    with pytest.raises(ValueError, match="--confine"):
        confine_modes("off,required", many=False)


def test_images_prune_kind() -> None:
    _refused(["images", "prune", "--kind", "foo", "--yes"], "--kind 'foo'", "task, bench, dataset")


# a server whose start-up fails: its lifespan leaves a thread running (as an unclosed
# aiosqlite connection does) and raises; uvicorn exits 3, the thread would hold the exit
_FAILING_SERVER = """
import threading
from contextlib import asynccontextmanager
from fastapi import FastAPI
from agentfleet.serving import serve_until_signal, uvicorn_config

@asynccontextmanager
async def lifespan(app):
    threading.Thread(target=threading.Event().wait, name="left-behind").start()
    raise RuntimeError("start-up fails")
    yield

serve_until_signal(uvicorn_config(FastAPI(lifespan=lifespan), "127.0.0.1", 0))
"""


def test_failed_start_up_exits_promptly() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _FAILING_SERVER], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3, proc.stderr
    assert "start-up fails" in proc.stderr and "left-behind" in proc.stderr
