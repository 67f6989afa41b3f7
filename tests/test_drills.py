"""SIGKILL drills (issue 14): each server of a fleet SIGKILLed mid-run and started again on
the same port with the same state, and the runner SIGKILLed and resumed. Every task ends
exactly once in the run folder's results, every evaluation job has one stored result, and
nothing is left: no sandbox on the server, no sandbox folder, no sandbox process.

Real subprocesses of the project's own commands: ``serve-sandbox`` (process backend),
``serve-eval`` (a SQLite job file), ``mock-llm`` (answers like the oracle) and ``agentfleet
run`` on the 8 tasks of perf-lite/test. Each kill waits for a condition (commands running in
sandboxes, jobs queued and running, a model call in flight, results written), never for a
fixed time; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
import requests
from conftest import sandbox_processes
from test_cli_servers import AGENTFLEET, free_port, wait_healthy
from test_exec_guard import _guards_of
from test_faults import fleet_config, job_rows, servers

from agentfleet.evaluation.client import EvalClient
from agentfleet.evaluation.eval_pool import label_of
from agentfleet.evaluation.evaluator import EvalConfig, Evaluator
from agentfleet.evaluation.schema import EvalRequest
from agentfleet.evaluation.server import create_app as eval_app
from agentfleet.evaluation.store import JobStore
from agentfleet.fleet.rundir import RunDir
from agentfleet.fleet.runner import run_fleet
from agentfleet.models import ModelSpec
from agentfleet.sandbox.base import CreateSandbox, SandboxNotFound
from agentfleet.sandbox.client import SandboxClient
from agentfleet.sandbox.folders import MARKER
from agentfleet.sandbox.server import create_app as sandbox_app
from agentfleet.serving import serve_in_loop
from agentfleet.tasks import load_dataset

TASKS = load_dataset("perf-lite").task_ids("test")
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 120) -> T:
    """Poll ``check`` until it returns something true (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class Command:
    """One ``agentfleet`` command as a subprocess, its output appended to a log file: started,
    SIGKILLed and started again with the same arguments (a server: on the same port)."""

    def __init__(self, log: Path, *args: str, port: int | None = None) -> None:
        self.args = [AGENTFLEET, *args, *(["--port", str(port)] if port else [])]
        self.url = f"http://127.0.0.1:{port}" if port else ""
        self.log = log
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Command:
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, text=True)
        return self

    def healthy(self) -> Command:
        assert self.proc is not None
        wait_healthy(self.url, self.proc, timeout=60)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.args[1]} still running after {timeout:g} s:\n{self.tail()}")

    def stop(self) -> int | None:
        """SIGINT (the graceful stop), SIGKILL after 30 s; the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class Fleet:
    """A sandbox server, an evaluation server using it, the mock LLM, and runs against them.

    ``eval_latency``: the evaluation server in test mode (each job sleeps this long, reward
    1), for drills where what matters is elsewhere: shorter on a loaded machine."""

    def __init__(
        self, tmp: Path, llm_latency: float = 0.0, eval_latency: float | None = None
    ) -> None:
        self.tmp, self.root, self.db = tmp, tmp / "sandboxes", tmp / "jobs.sqlite"
        self.run_dir = tmp / "run"
        sp, ep, mp = free_port(), free_port(), free_port()
        self.sandbox = Command(
            tmp / "sandbox.log", "serve-sandbox", "--root", str(self.root), port=sp
        )
        evaluate = ["--sandbox-url", self.sandbox.url, "--repeats", "1"]
        if eval_latency is not None:
            evaluate = ["--test-latency", str(eval_latency)]
        self.evaluation = Command(
            tmp / "eval.log",
            "serve-eval",
            *("--db", str(self.db), "--workers", "2", *evaluate),
            port=ep,
        )
        latency = ["--latency", str(llm_latency)] if llm_latency else []
        self.llm = Command(tmp / "llm.log", "mock-llm", *latency, port=mp)
        self.servers = [self.sandbox, self.evaluation, self.llm]
        self.runs: list[Command] = []

    def start(self) -> None:
        for server in self.servers:
            server.start()
        for server in self.servers:
            server.healthy()

    def run(self, *extra: str) -> Command:
        """``agentfleet run`` against the servers (``--resume`` among ``extra``: a resume)."""
        where = [] if "--resume" in extra else ["--run-dir", str(self.run_dir)]
        model = [] if "--resume" in extra else ["--model", "openai/mock-oracle"]
        run = Command(
            self.tmp / f"run{len(self.runs)}.log",
            "run",
            *where,
            *model,
            *("--model-url", f"{self.llm.url}/v1"),
            *("--sandbox-url", self.sandbox.url, "--eval-url", self.evaluation.url),
            *("--progress", "plain"),
            *extra,
        )
        self.runs.append(run)
        return run.start()

    def finish(self, run: Command, timeout: float = 240) -> None:
        assert run.wait(timeout) == 0, run.tail()

    def close(self) -> None:
        for command in [*self.runs, *self.servers]:
            command.stop()


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """``make_fleet(**kw)``: a :class:`Fleet` in ``tmp_path``, every process stopped after."""
    made: list[Fleet] = []

    def make(**kw: Any) -> Fleet:
        made.append(Fleet(tmp_path, **kw))
        return made[-1]

    try:
        yield make
    finally:
        for f in made:
            f.close()


# what the drills look at --------------------------------------------------------------
def results(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_each_task_once_and_solved(run_dir: Path) -> list[dict[str, Any]]:
    """Each task has one result line, submitted and solved: evaluated ``ok`` with reward >
    0, or in test mode (no real evaluation) with the oracle's change as its submission."""
    rows = results(run_dir)
    assert Counter(r["instance_id"] for r in rows) == Counter(TASKS), rows  # once each
    for r in rows:
        assert r["exit_status"] == "Submitted" and not r["error"], r
        assert r["reward"] > 0, r
        if r["info"].get("test_mode"):
            traj = json.loads(RunDir(run_dir).trajectory(r["instance_id"]).read_text())
            assert traj["info"]["submission"].startswith("diff --git"), traj["info"]
        else:
            assert r["info"].get("status") == "ok", r
    return rows


def run_label(folder: Path) -> str:
    """A sandbox folder's run label (``evaluation:<job id>`` for an evaluation's: as
    ``evaluation``), "" while its marker is being made or removed."""
    try:
        run = str(json.loads((folder / MARKER).read_text()).get("run", ""))
    except (OSError, ValueError):
        return ""
    return "evaluation" if run.startswith("evaluation:") else run


def sandbox_runs(root: Path) -> Counter[str]:
    """Sandbox folders under ``root`` by run label."""
    return Counter(run_label(f) for f in (root.iterdir() if root.exists() else []))


def busy_runs(root: Path) -> set[str]:
    """The run labels of sandboxes under ``root`` with a command running."""
    return {run_label(Path(folder)) for folder in sandbox_processes(root)}


def jobs(db: Path) -> list[tuple[str, str, int]]:
    return asyncio.run(job_rows(db))


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            continue
    return out


def assert_nothing_left(fleet: Fleet) -> None:
    """The sandbox server (still running) lists no sandbox; its root holds no folder; then,
    every process stopped, no sandbox process is left."""
    listed = requests.get(f"{fleet.sandbox.url}/sandboxes", timeout=30).json()
    assert listed == [], listed
    assert list(fleet.root.iterdir()) == []
    fleet.close()
    assert sandbox_processes(fleet.root) == {}
    assert list(fleet.root.iterdir()) == []


# the drills ---------------------------------------------------------------------------
@pytest.mark.slow
def test_sandbox_server_sigkilled_mid_run(make_fleet: Callable[..., Fleet]) -> None:
    """Killed while evaluations run commands in their sandboxes and the agents hold theirs;
    started again on the same root: it reaps the dead server's folders and processes, the
    tasks whose sandboxes were lost start over, each ends once, solved."""
    fleet = make_fleet()
    fleet.start()
    run = fleet.run()
    label = fleet.run_dir.name
    wait_for(
        "an evaluation running a command while agents hold sandboxes",
        lambda: "evaluation" in busy_runs(fleet.root) and sandbox_runs(fleet.root)[label],
    )
    guards = _guards_of(fleet.sandbox.pid)
    fleet.sandbox.kill()
    left = {f.name for f in fleet.root.iterdir()}
    print(
        "sandboxes at the kill:",
        dict(sandbox_runs(fleet.root)),
        "results:",
        len(results(fleet.run_dir)),
    )
    assert guards and len(results(fleet.run_dir)) < len(TASKS)
    # the exec guard of the killed server killed its commands and exited
    wait_for("the killed server's commands to die", lambda: not sandbox_processes(fleet.root))
    wait_for("the killed server's exec guard to exit", lambda: not alive(guards))
    fleet.sandbox.start().healthy()
    assert not left & {f.name for f in fleet.root.iterdir()}  # reaped as it started
    fleet.finish(run)
    rows = assert_each_task_once_and_solved(fleet.run_dir)
    print("task attempts:", {r["instance_id"]: r["attempts"] for r in rows})
    assert any(r["attempts"] == 2 for r in rows)  # some tries lost their sandbox
    assert all(status == "done" for _, status, _ in jobs(fleet.db))
    assert_nothing_left(fleet)


@pytest.mark.slow
def test_eval_server_sigkilled_mid_run(make_fleet: Callable[..., Fleet]) -> None:
    """Killed with jobs queued and running; started again on the same job file: the running
    jobs run again, every job ends with one stored result, the runner's waiting clients
    ride over the restart, each task ends once, solved."""
    fleet = make_fleet()
    fleet.start()
    run = fleet.run()

    def queued_and_running() -> list[tuple[str, str, int]] | None:
        rows = jobs(fleet.db) if fleet.db.exists() else []
        states = Counter(s for _, s, _ in rows)
        running = states["running"] and "evaluation" in busy_runs(fleet.root)
        return rows if running and states["queued"] else None

    at_kill = wait_for("jobs queued, and running commands", queued_and_running)
    fleet.evaluation.kill()
    print("jobs at the kill:", at_kill, "sandboxes:", dict(sandbox_runs(fleet.root)))
    assert sandbox_runs(fleet.root)["evaluation"]  # the killed server's, for the next one
    fleet.evaluation.start().healthy()
    fleet.finish(run)
    rows = assert_each_task_once_and_solved(fleet.run_dir)
    after = jobs(fleet.db)
    print("jobs after:", after, "task attempts:", [r["attempts"] for r in rows])
    assert all(status == "done" for _, status, _ in after), after  # none lost or stuck
    assert Counter(i for i, _, _ in after) == Counter(TASKS)  # one job per task
    with_result = _results_stored(fleet.db)
    assert with_result == len(after)
    running = {i for i, s, _ in at_kill if s == "running"}
    assert all(a == 2 for i, _, a in after if i in running)  # started again once
    assert_nothing_left(fleet)


def _results_stored(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        (n,) = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE result IS NOT NULL AND finished IS NOT NULL"
        ).fetchone()
    return int(n)


@pytest.mark.slow
def test_mock_llm_sigkilled_mid_run(make_fleet: Callable[..., Fleet]) -> None:
    """Killed with model calls in flight: the agents' calls retry until it is back; each
    task ends once, solved (evaluations in test mode: the model's path is drilled)."""
    fleet = make_fleet(llm_latency=0.3, eval_latency=0.5)
    fleet.start()
    run = fleet.run()

    def calls_in_flight() -> dict[str, Any] | None:
        stats = requests.get(f"{fleet.llm.url}/stats", timeout=10).json()
        return stats if stats["completions"] >= 4 and stats["in_flight"] else None

    stats = wait_for("model calls in flight", calls_in_flight)
    fleet.llm.kill()
    print("mock LLM at the kill:", stats)
    fleet.llm.start().healthy()
    fleet.finish(run)
    assert_each_task_once_and_solved(fleet.run_dir)
    assert_nothing_left(fleet)


@pytest.mark.slow
def test_runner_sigkilled_then_resumed(make_fleet: Callable[..., Fleet]) -> None:
    """Killed with results written and agents holding sandboxes; ``run --resume`` runs the
    rest: each task ends once (none twice, none missing), the killed run's sandboxes are
    deleted, its evaluation jobs (test mode: 1 s each) never reach the results."""
    fleet = make_fleet(eval_latency=1.0)
    fleet.start()
    first = fleet.run()
    label = fleet.run_dir.name
    wait_for(
        "results written while agents hold sandboxes",
        lambda: len(results(fleet.run_dir)) >= 2 and sandbox_runs(fleet.root)[label],
    )
    first.kill()
    done = {r["instance_id"] for r in results(fleet.run_dir)}
    print("results at the kill:", sorted(done), "sandboxes:", dict(sandbox_runs(fleet.root)))
    assert len(done) < len(TASKS)
    resume = fleet.run("--resume", str(fleet.run_dir))
    fleet.finish(resume)
    rows = assert_each_task_once_and_solved(fleet.run_dir)
    assert {r["instance_id"] for r in rows[: len(done)]} == done  # kept as they were
    wait_for(
        "every evaluation job to end",
        lambda: all(s in ("done", "failed") for _, s, _ in jobs(fleet.db)),
    )
    assert_nothing_left(fleet)
    assert os.path.exists(fleet.run_dir / "summary.json")


# what a killed client left, deleted by the next one (fast, in-process servers) -----------
async def test_a_restarted_eval_server_deletes_its_killed_jobs_sandboxes(tmp_path: Path) -> None:
    """A job the killed server was running (``running``, started once) and the sandbox it
    left, labelled with the job: the next server on the same job file deletes it before it
    runs the job again; a sandbox of another label stays."""
    db = tmp_path / "jobs.sqlite"
    async with JobStore(db) as store:
        req = EvalRequest(
            exit_status="Submitted", result="", instance_id="sku-diff", dataset_name="perf-lite"
        )
        job, _ = await store.create_or_get("k1", "h1", req.model_dump())
        assert await store.mark_running(job.id, "lease-of-the-killed-server")
    async with serve_in_loop(sandbox_app(root=tmp_path / "sb")) as sandbox:
        client = SandboxClient(sandbox.url)
        left = await client.create(CreateSandbox(run=label_of(job.id)))
        other = await client.create(CreateSandbox(run="evaluation:another-server's-job"))
        evaluator = Evaluator(client, EvalConfig(repeats=1))
        async with serve_in_loop(eval_app(evaluator, db_path=db, workers=1)) as evaluation:
            assert (await EvalClient(evaluation.url).wait(job.id))["status"] == "done"
            for _ in range(600):  # deleted in the background as the server started
                ids = [i.sandbox_id for i in await client.list()]
                if left.sandbox_id not in ids:
                    break
                await asyncio.sleep(0.05)
        assert ids == [other.sandbox_id]
        await client.delete(other.sandbox_id)


async def test_a_resumed_run_deletes_the_sandboxes_its_killed_invocation_left(
    tmp_path: Path,
) -> None:
    """On an external sandbox server, the sandboxes labelled with the run (its killed
    invocation's, a command still running in one) are deleted by ``--resume``; another
    run's stay."""
    async with servers(tmp_path) as (sandbox_url, eval_url):
        cfg = fleet_config(tmp_path, ModelSpec("oracle"), ["sku-diff"])
        cfg.sandbox_url, cfg.eval_url, cfg.resume = sandbox_url, eval_url, True
        client = SandboxClient(sandbox_url)
        left = await client.create(CreateSandbox(run=cfg.run_dir.name))
        busy = asyncio.ensure_future(client.exec(left.sandbox_id, "sleep 300", timeout=600))
        other = await client.create(CreateSandbox(run="another-run"))
        (outcome,) = await run_fleet(cfg)
        ids = [i.sandbox_id for i in await client.list()]
        with pytest.raises(SandboxNotFound, match="deleted while the command ran"):
            await asyncio.wait_for(busy, 60)  # its command died with its sandbox
        await client.delete(other.sandbox_id)
    assert outcome.exit_status == "Submitted" and outcome.reward > 0, outcome
    assert ids == [other.sandbox_id]
