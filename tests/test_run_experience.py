"""The run experience: progress output, resume, ``show`` and the HTML ``report``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool
from rich.console import Console
from typer.testing import CliRunner, Result

from agentfleet.agent import AgentConfig
from agentfleet.cli import app
from agentfleet.fleet.dashboard import Dashboard, PlainProgress, choose_mode
from agentfleet.fleet.html_report import build_report, write_report
from agentfleet.fleet.results import (
    latest_results,
    plan_resume,
    read_records,
    repair_tail,
    result_state,
)
from agentfleet.fleet.run import run
from agentfleet.fleet.rundir import RunDir
from agentfleet.fleet.runner import FleetConfig, FleetMonitor, TaskOutcome, run_fleet
from agentfleet.fleet.show import print_trajectory, results_table
from agentfleet.models import SUBMIT_SENTINEL, ModelSpec
from agentfleet.models.offline import bash_reply
from agentfleet.tasks import load_dataset

AGENTFLEET = str(Path(sys.executable).with_name("agentfleet"))
CHROMIUM = shutil.which("chromium")  # on PATH only: hiding it from PATH skips the test
EVIL = "<script>alert('x')</script> & \"quoted\""


def record(iid: str, **kw: Any) -> dict[str, Any]:
    rec = asdict(TaskOutcome(iid, "Submitted", reward=0.5, speedup=1.5, info={"status": "ok"}))
    rec.update(kw)
    rec["state"] = result_state(rec)
    return rec


def write_results(run_dir: Path, records: list[dict[str, Any]], tail: str = "") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


# -- results: state, truncated lines, resume plan ------------------------------------------
def test_result_state() -> None:
    assert result_state(record("a")) == "done"
    assert result_state(record("a", info={"status": "tests_failed"})) == "done"  # scored 0
    assert result_state(record("a", error="boom")) == "failed"
    assert result_state(record("a", exit_status="Error")) == "failed"
    assert result_state(record("a", info={"status": "error", "error": "x"})) == "failed"


def test_truncated_last_line_is_ignored_and_repaired(tmp_path: Path) -> None:
    half = json.dumps(record("c"))[:40]
    path = write_results(tmp_path, [record("a"), record("b")], tail=half)
    assert [r["instance_id"] for r in read_records(path)] == ["a", "b"]
    assert list(latest_results(tmp_path)) == ["a", "b"]
    assert repair_tail(path)
    assert path.read_text().endswith("\n")
    assert len(path.read_text().splitlines()) == 2  # the half line is gone, the rest kept
    assert not repair_tail(path)
    # A complete last line without its newline is kept, with the newline added.
    path.write_text(json.dumps(record("a")) + "\n" + json.dumps(record("b")))
    assert repair_tail(path)
    assert [r["instance_id"] for r in read_records(path)] == ["a", "b"]


def test_plan_resume_skips_done_and_reruns_failed_only_on_request(tmp_path: Path) -> None:
    write_results(
        tmp_path,
        [record("a"), record("b", error="boom"), record("c", error="x"), record("c")],
        tail='{"instance_id": "d", "exit_st',
    )
    ids = ["a", "b", "c", "d", "e"]
    plan = plan_resume(tmp_path, ids)
    assert plan.done == ["a", "c"]  # c's newer line is a success
    assert plan.failed == ["b"]
    assert plan.todo == ["d", "e"]  # d's line is half-written: not a result
    plan = plan_resume(tmp_path, ids, rerun_failed=True)
    assert plan.todo == ["b", "d", "e"]


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def fake_config(tmp_path: Path, ids: list[str], **kw: Any) -> FleetConfig:
    return FleetConfig(
        model=ModelSpec("oracle"),
        run_dir=tmp_path / "run",
        task_ids=ids,
        workers=2,
        sandbox_root=tmp_path / "sandboxes",
        sample_every_s=0.05,
        **kw,
    )


async def test_run_fleet_resume(tmp_path: Path, fake_agents: list[str]) -> None:
    ids = ["byte-stats", "rr-scheduler", "dedupe-pairs", "sku-diff"]
    events: list[tuple[str, str]] = []
    monitor = FleetMonitor()

    def listener(event: str, task: Any, outcome: Any) -> None:
        events.append((event, task.id))

    await run_fleet(fake_config(tmp_path, ids[:2]), listener, monitor=monitor)
    assert sorted(fake_agents) == ids[:2]
    assert monitor.done == 2 and monitor.failed == 0 and monitor.samples >= 1
    assert sorted(events) == sorted([(e, i) for i in ids[:2] for e in ("start", "done")])
    # The first run crashed while writing a line; the resumed run covers all four tasks.
    results = tmp_path / "run" / "results.jsonl"
    await asyncio.to_thread(append, results, '{"instance_id": "sku-di')
    fake_agents.clear()
    monitor = FleetMonitor()
    out = await run_fleet(fake_config(tmp_path, ids, resume=True), monitor=monitor)
    assert [o.instance_id for o in out] == ["dedupe-pairs", "sku-diff"]
    assert sorted(fake_agents) == ["dedupe-pairs", "sku-diff"]
    assert monitor.skipped == 2 and monitor.failed == 1 and monitor.done == 1
    assert list(monitor.errors) == ["dedupe-pairs: RuntimeError: flaky"]
    # Failed tasks stay failed on a plain resume and run again with rerun_failed.
    fake_agents.clear()
    await run_fleet(fake_config(tmp_path, ids, resume=True))
    assert fake_agents == []
    await run_fleet(fake_config(tmp_path, ids, resume=True, rerun_failed=True))
    assert fake_agents == ["dedupe-pairs"]
    lines = await asyncio.to_thread(lambda: results.read_text().splitlines())
    assert all(json.loads(line)["state"] in {"done", "failed"} for line in lines)
    order = [json.loads(line)["instance_id"] for line in lines]  # appended, never rewritten
    assert len(order) == 5
    assert sorted(order[:2]) == ids[:2] and sorted(order[2:4]) == ids[2:]
    assert order[4] == "dedupe-pairs"
    config = json.loads(await asyncio.to_thread((tmp_path / "run" / "config.json").read_text))
    assert sorted(config["tasks"]) == sorted(ids)
    assert [inv["resume"] for inv in config["invocations"]] == [False, True, True, True]
    pool = await asyncio.to_thread(read_records, tmp_path / "run" / "pool_stats.jsonl")
    assert pool and {"open", "created", "reused", "in_flight", "elapsed_s"} <= set(pool[0])


def test_run_writes_the_summary_of_the_whole_run(tmp_path: Path, fake_agents: list[str]) -> None:
    """run(): the summary covers every task of a resumed run and adds up the wall time."""
    ids = ["byte-stats", "rr-scheduler", "sku-diff"]
    first = run(fake_config(tmp_path, ids[:2]))
    files = RunDir(tmp_path / "run")
    assert json.loads(files.summary.read_text()) == first.summary
    assert first.summary["tasks"] == 2 and first.summary["wall_s"] > 0
    assert first.monitor.done == 2
    second = run(fake_config(tmp_path, ids, resume=True))
    assert fake_agents[2:] == [ids[2]]  # only the task without a result ran
    assert sorted(o.instance_id for o in second.outcomes) == sorted(ids)  # the whole run
    assert second.summary["tasks"] == 3 and second.monitor.done == 1
    assert second.summary["wall_s"] > first.summary["wall_s"]  # both invocations
    assert json.loads(files.summary.read_text()) == second.summary
    third = run(fake_config(tmp_path, ids, resume=True))  # nothing left: sums up only
    assert len(fake_agents) == 3 and third.summary["tasks"] == 3
    assert len(files.read_config()["invocations"]) == 2  # a resume with nothing to run


def test_run_dir_merges_config_and_writes_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = RunDir(tmp_path / "run")
    assert not files.is_run() and files.read_summary() == {} and files.wall_s() == (0.0, 0.0)
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        files.read_config()
    files.merge_config({"model": "a", "tasks": ["x"], "invocations": [{"n": 1}]})
    files.merge_config({"model": "b", "invocations": [{"n": 2}]})  # a resume
    saved = files.read_config()
    assert saved["model"] == "b" and saved["tasks"] == ["x"]
    assert [i["n"] for i in saved["invocations"]] == [1, 2]
    assert files.is_run() and files.trajectories.is_dir() and files.trajectory_ids() == []
    files.write_summary({"wall_s": 2.5})
    assert files.wall_s() == (2.5, 2.5)  # invocations of a version that recorded none

    def full(*_: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="disk full"):
        files.write_summary({"wall_s": 9.0})
    assert files.wall_s() == (2.5, 2.5)  # the old file, whole, no temporary file left over
    assert sorted(p.name for p in files.path.iterdir()) == [
        "config.json",
        "summary.json",
        "trajectories",
    ]


# -- progress ------------------------------------------------------------------------------
def test_plain_progress_prints_one_line_per_event() -> None:
    tasks = load_dataset("perf-lite").tasks("test")[:3]
    monitor = FleetMonitor(total=3)
    lines: list[str] = []
    plain = PlainProgress(monitor, lines.append, clock=lambda: "12:00:00")
    for t in tasks:
        monitor.running[t.id] = time.monotonic()
        plain("start", t, None)
    for i, t in enumerate(tasks):
        o = TaskOutcome(t.id, "Submitted", reward=0.5, speedup=1.7, info={"status": "ok"})
        if i == 1:
            o.exit_status, o.error = "Error", "HttpError: boom"
        monitor.record(o)
        plain("done", t, o)
    assert len(lines) == 6
    assert lines[0] == f"12:00:00 [0/3] start {tasks[0].id} (1 running)"
    assert lines[3].startswith(f"12:00:00 [1/3] done {tasks[0].id}: Submitted eval=ok")
    assert "speedup=1.70x" in lines[3] and "ETA" in lines[3]
    assert lines[4].startswith(f"12:00:00 [2/3] FAILED {tasks[1].id}: Error")
    assert "HttpError: boom" in lines[4]


def test_choose_mode() -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    assert choose_mode("auto", Tty()) == "rich"
    assert choose_mode(None, sys.stdout) in {"rich", "plain"}
    assert choose_mode("plain") == "plain" and choose_mode("none") == "none"
    with pytest.raises(ValueError, match="progress mode"):
        choose_mode("fancy")


def test_dashboard_renders_the_monitor() -> None:
    class Stats:
        calls, prompt_tokens, completion_tokens, cost = 3, 1200, 300, 0.0123

    class Model:
        stats = Stats()

    now = time.monotonic()
    monitor = FleetMonitor(total=4, done=1, failed=1, started_at=now - 30)
    monitor.running = {"sku-diff": now - 5}
    monitor.stage = {"sku-diff": "eval"}
    monitor.models = {"sku-diff": Model(), "a": Model()}
    monitor.eval_queue = {
        "queued": 2,
        "running": 1,
        "workers": 2,
        "throughput_per_minute": 7.0,
        "queue_wait_mean_s": 12.0,
        "worker_slots": [
            {"worker": 0, "cpus": "0", "job_id": "j1"},
            {"worker": "ray-eval-0@ab12", "cpus": "1", "job_id": None},
        ],
    }
    monitor.pool = {"open": 5, "created": 7, "reused": 90, "in_flight": 3, "waiting": 0}
    monitor.errors.append("dedupe-pairs: RuntimeError: boom")
    console = Console(record=True, width=120)
    console.print(Dashboard(monitor, console).render())
    text = console.export_text()
    for needle in (
        "2/4",
        "ETA 30s",
        "1 running",
        "1 done",
        "1 failed",
        "2 queued · 1 running",
        "7/min",
        "queue wait 12s",
        "1/2 busy: 0 (cpu 0) ray-eval-0@ab12 (cpu 1)",
        "5 open · 7 created · 90 reused · 3 in flight",
        "6 calls · 3.0k tokens",
        "$0.0246",
        "sku-diff",
        "eval",
        "RuntimeError: boom",
    ):
        assert needle in text, (needle, text)


# -- show ----------------------------------------------------------------------------------
def fabricated_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    (run_dir / "trajectories").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"tasks": ["t1", "t2", "t3"]}))
    write_results(run_dir, [record("t1"), record("t2", error="boom")])
    long_output = "\n".join(f"line {i}" for i in range(200))
    traj = {
        "trajectory_format": "mini-swe-agent-1",
        "instance_id": "t1",
        "info": {
            "exit_status": "Submitted",
            "submission": "diff --git a/x b/x\n+fast\n",
            "model_stats": {"instance_cost": 0.5, "api_calls": 2},
            "model": "scripted",
            "reward": 0.5,
            "speedup": 1.5,
            "evaluation": {"status": "ok"},
        },
        "messages": [
            {"role": "system", "content": "You are fast."},
            {"role": "user", "content": f"Make it faster. {EVIL}"},
            {"role": "assistant", "content": bash_reply("look", "ls -la && cat x.py")},
            {"role": "user", "content": f"<returncode>0</returncode>\n{long_output}"},
        ],
    }
    (run_dir / "trajectories" / "t1.traj.json").write_text(json.dumps(traj))
    return run_dir


def test_show_renders_a_trajectory(tmp_path: Path) -> None:
    run_dir = fabricated_run(tmp_path)
    traj = json.loads((run_dir / "trajectories" / "t1.traj.json").read_text())
    console = Console(record=True, width=100)
    print_trajectory(traj, console)
    text = console.export_text()
    for needle in ("0 system", "1 user", "2 assistant", "3 user", "ls -la && cat x.py", EVIL):
        assert needle in text, needle
    assert "line 0" in text and "line 199" in text and "line 100" not in text
    assert "lines clipped; --full shows everything" in text
    assert "2 calls" in text and "$0.5000" in text
    console = Console(record=True, width=100)
    print_trajectory(traj, console, full=True)
    assert "line 100" in console.export_text()
    console = Console(record=True, width=120)
    console.print(results_table(run_dir))
    text = console.export_text()
    assert "t1" in text and "failed" in text and "pending" in text


def test_cli_show_and_report_and_bad_input(tmp_path: Path) -> None:
    run_dir = fabricated_run(tmp_path)

    def cli(*args: str) -> Result:
        return CliRunner().invoke(app, list(args), env={"COLUMNS": "120"})

    out = cli("show", str(run_dir))
    assert out.exit_code == 0 and "t2" in out.stdout and "pending" in out.stdout, out
    out = cli("show", str(run_dir), "t1")
    assert out.exit_code == 0 and "2 assistant" in out.stdout and "ls -la" in out.stdout
    out = cli("show", str(run_dir), "nope")
    assert out.exit_code == 2 and "no trajectory" in out.stderr and "t1" in out.stderr
    out = cli("report", str(run_dir), "-o", str(tmp_path / "r.html"))
    assert out.exit_code == 0, out.stderr
    assert 'href="run/trajectories/t1.traj.json"' in (tmp_path / "r.html").read_text()
    out = cli("run", "--rerun-failed")
    assert out.exit_code == 2 and "--rerun-failed needs --resume" in out.stderr
    out = cli("run", "--resume", str(tmp_path / "nothing"))
    assert out.exit_code == 2 and "cannot resume" in out.stderr
    out = cli("run", "--progress", "fancy")
    assert out.exit_code == 2 and "progress mode" in out.stderr


def test_report_of_a_fabricated_run_escapes_everything(tmp_path: Path) -> None:
    run_dir = fabricated_run(tmp_path)
    page = build_report(run_dir)
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;" in page
    assert page.count("<svg") >= 3
    assert 'href="trajectories/t1.traj.json"' in page


# -- a real run: report and Chromium ---------------------------------------------------------
@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Oracle on dedupe-pairs, then a resumed run adds sku-diff with a scripted model
    whose output contains HTML and that breaks the code (tests fail: scored, not correct)."""
    tmp = tmp_path_factory.mktemp("real")
    replies = [
        bash_reply("look", "echo \"<script>alert('x')</script> & more\" && ls"),
        bash_reply("break", "printf 'def broken(:\\n' >> $(ls *.py | head -1)"),
        bash_reply("done", f"echo {SUBMIT_SENTINEL}"),
    ]
    (tmp / "r.json").write_text(json.dumps({"replies": replies}))
    scripted = ModelSpec(f"scripted:{tmp / 'r.json'}")
    scripted.prepare()
    base: dict[str, Any] = dict(
        run_dir=tmp / "run",
        workers=2,
        agent=AgentConfig(step_limit=6),
        sandbox_root=tmp / "sandboxes",
        eval_repeats=3,
    )
    asyncio.run(
        run_fleet(FleetConfig(model=ModelSpec("oracle"), task_ids=["dedupe-pairs"], **base))
    )
    ids = ["dedupe-pairs", "sku-diff"]
    out = asyncio.run(run_fleet(FleetConfig(model=scripted, task_ids=ids, resume=True, **base)))
    assert [o.instance_id for o in out] == ["sku-diff"]
    config = json.loads((tmp / "run" / "config.json").read_text())
    for invocation, wall_s in zip(config["invocations"], (5.0, 7.5), strict=True):
        invocation["wall_s"] = wall_s  # as run() records them: the report adds them up
    (tmp / "run" / "config.json").write_text(json.dumps(config))
    write_report(tmp / "run")
    yield tmp / "run"


@pytest.mark.slow
def test_report_of_a_real_run(real_run: Path) -> None:
    page = (real_run / "report.html").read_text()
    latest = latest_results(real_run)
    assert list(latest) == ["dedupe-pairs", "sku-diff"]
    oracle, broken = latest["dedupe-pairs"], latest["sku-diff"]
    assert oracle["state"] == broken["state"] == "done"
    assert oracle["info"]["status"] == "ok" and oracle["speedup"] > 1.5
    assert broken["info"]["status"] == "tests_failed" and broken["reward"] == 0.0
    # summary figures
    mean = (oracle["reward"] + broken["reward"]) / 2
    assert f'<div class="v">{mean:.3f}</div><div class="k">mean reward</div>' in page
    assert '<div class="k">geo-mean speedup</div>' in page
    for p in ("fast_1.0", "fast_1.5", "fast_2.0", "cost", "wall time"):
        assert f'<div class="k">{p}</div>' in page, p
    assert '<div class="v">50%</div><div class="k">fast_1.5</div>' in page  # oracle only
    assert '<div class="v">12.5 s</div>' in page
    # a row per task, linking to its trajectory, with its messages inline
    for iid, rec in latest.items():
        assert f'<a href="trajectories/{iid}.traj.json">{iid}</a>' in page
        assert f"{rec['speedup']:.2f}x" in page
        assert (real_run / "trajectories" / f"{iid}.traj.json").is_file()
    assert page.count("<details>") == 2 and "2 assistant" in page
    # plots and escaping
    assert page.count("<svg") == 5
    assert "speedup per task" in page and "reward distribution" in page
    assert "evaluation latency" in page and "connections" in page
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)" in page
    assert "<polyline" in page  # pool_stats.jsonl was recorded


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.slow
def test_report_renders_in_headless_chromium(real_run: Path, tmp_path: Path) -> None:
    require_tool("chromium", "renders the HTML report headless", available=CHROMIUM is not None)
    assert CHROMIUM is not None
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            (real_run / "report.html").resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), (proc.returncode, proc.stderr[-2000:])
    assert png_size(shot) == (1280, 2000)
    assert shot.stat().st_size > 30_000, "the screenshot looks blank"
    if os.environ.get("AGENTFLEET_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["AGENTFLEET_KEEP_SCREENSHOT"])


# -- SIGINT, then resume --------------------------------------------------------------------
@pytest.mark.slow
def test_interrupted_run_resumes_to_every_task_done_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    results = run_dir / "results.jsonl"
    ids = ["dedupe-pairs", "sku-diff", "byte-stats"]
    common = ["--sandbox-root", str(tmp_path / "sandboxes"), "--eval-repeats", "1"]
    args = [AGENTFLEET, "run", "--workers", "1", "--run-dir", str(run_dir), *common]
    for i in ids:
        args += ["--task", i]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and results.read_text().count("\n") >= 1:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no result line appeared (exit {proc.poll()})")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    first = [json.loads(line) for line in results.read_text().splitlines()]
    assert 1 <= len(first) < 3
    assert "start dedupe-pairs" in err  # plain progress: stdout is not a terminal
    resumed = subprocess.run(
        [AGENTFLEET, "run", "--resume", str(run_dir), "--workers", "2", *common],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(first)} done" in resumed.stderr, resumed.stderr
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["instance_id"] for r in lines) == sorted(ids)  # each exactly once
    assert all(r["state"] == "done" and r["exit_status"] == "Submitted" for r in lines)
    for i in ids:  # the table covers the whole run, and the model came from config.json
        assert i in resumed.stdout
    started = [line for line in resumed.stderr.splitlines() if " start " in line]
    assert len(started) == 3 - len(first)
    # both invocations' wall times count, the interrupted one's too
    walls = [
        i.get("wall_s") for i in json.loads((run_dir / "config.json").read_text())["invocations"]
    ]
    assert len(walls) == 2 and all(isinstance(w, float) and w > 0 for w in walls), walls
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["wall_s"] == pytest.approx(sum(walls))
    assert not (tmp_path / "sandboxes").exists() or not list((tmp_path / "sandboxes").iterdir())


def test_run_help_shows_the_defaults() -> None:
    """rich reads ``[default: ...]`` in a help text as markup and dropped it: escaped, the
    defaults of ``agentfleet run``'s options show."""
    out = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert out.exit_code == 0, out.output
    for shown in ("[default: perf-lite]", "[default: test]", "[default: 5]", "[default: 30]"):
        assert shown in out.output, shown
