"""The fleet end to end: real sandbox and evaluation servers on 127.0.0.1, real subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import sandbox_processes, sandboxes_running
from test_sandbox import SlowCreate  # at import: an import inside an async test blocks
from typer.testing import CliRunner

from agentfleet.agent import AgentConfig
from agentfleet.cli import app
from agentfleet.fleet.runner import FleetConfig, run_fleet
from agentfleet.http import HttpPool, RetryPolicy
from agentfleet.models import SUBMIT_SENTINEL, ModelSpec
from agentfleet.models.mock_server import create_mock_llm_app
from agentfleet.models.offline import bash_reply
from agentfleet.serving import serve_in_loop

AGENTFLEET = str(Path(sys.executable).with_name("agentfleet"))


def config(tmp_path: Path, model: ModelSpec, tasks: list[str]) -> FleetConfig:
    return FleetConfig(
        model=model,
        run_dir=tmp_path / "run",
        task_ids=tasks,
        workers=4,
        agent=AgentConfig(step_limit=6),
        sandbox_root=tmp_path / "sandboxes",
        eval_repeats=3,
    )


def scripted(tmp_path: Path, *commands: str) -> ModelSpec:
    replies = [bash_reply("step", c) for c in commands]
    replies.append(bash_reply("done", f"echo {SUBMIT_SENTINEL}"))
    path = tmp_path / "replies.json"  # JSON is YAML
    path.write_text(json.dumps({"replies": replies}))
    spec = ModelSpec(f"scripted:{path}")
    spec.prepare()
    return spec


def zombie(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.iterdir()] if root.exists() else []


@pytest.mark.slow
async def test_oracle_fleet_end_to_end(tmp_path: Path) -> None:
    cfg = config(tmp_path, ModelSpec("oracle"), ["dedupe-pairs", "rr-scheduler"])
    cfg.eval_reference = True  # the oracle's patch is the reference: both are timed
    outcomes = await run_fleet(cfg)
    assert [o.instance_id for o in outcomes] == ["dedupe-pairs", "rr-scheduler"]
    for o in outcomes:
        assert o.exit_status == "Submitted", o
        assert o.info["status"] == "ok", o.info
        assert o.reward > 0 and o.speedup >= 1.5, o
        assert o.info["reference_speedup"] >= 1.5, o.info
    lines = (cfg.run_dir / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["instance_id"] for line in lines) == [
        "dedupe-pairs",
        "rr-scheduler",
    ]
    traj = json.loads((cfg.run_dir / "trajectories" / "dedupe-pairs.traj.json").read_text())
    assert traj["info"]["exit_status"] == "Submitted"
    assert "diff --git" in traj["info"]["submission"]
    assert traj["messages"][0]["role"] == "system"
    assert traj["trajectory_format"] == "mini-swe-agent-1"  # mini-swe-agent's tools read it
    assert traj["info"]["model_stats"]["api_calls"] >= 1
    assert traj["info"]["model_stats"]["instance_cost"] == 0.0  # the oracle is free
    assert json.loads((cfg.run_dir / "config.json").read_text())["eval_reference"] is True
    assert cfg.sandbox_root is not None and leftovers(cfg.sandbox_root) == []


@pytest.mark.slow
def test_no_change_scores_about_one_and_no_reward(tmp_path: Path) -> None:
    cfg = config(tmp_path, scripted(tmp_path, "ls"), ["sku-diff"])
    # 5 rounds: at 3, noise that favours one side in every round (1 in 4 by chance) read
    # as a gain under load (1.085x, interval 1.03-1.23, seen with the suite running)
    cfg.eval_repeats = 5
    (outcome,) = asyncio.run(run_fleet(cfg))
    assert outcome.exit_status == "Submitted"
    assert outcome.info["status"] == "ok"
    assert outcome.info["patch_lines"] == 0
    assert 0.6 < outcome.speedup < 1.6  # same code: about 1 (noisy shared machine)
    if outcome.info["within_noise"]:
        assert outcome.reward == 0.0
    else:
        # Noise read as a gain: the rule's few percent of false positives at this noise
        # (benchmarks/noise_rule.py; seen once in CI at 1.069x, every round one side).
        # Only a small one: a 15% gain from no change is no noise but a bug.
        assert outcome.speedup < 1.15 and outcome.reward < 0.21, outcome.info["timing"]


@pytest.mark.slow
def test_breaking_change_scores_zero(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        scripted(
            tmp_path,
            "echo 'x = (' >> inventory.py || true",
            "printf 'def broken(:\\n' >> $(ls *.py | head -1)",
        ),
        ["sku-diff"],
    )
    cfg.pool = "20/10"  # a local run takes its pool limits from the config
    (outcome,) = asyncio.run(run_fleet(cfg))
    assert outcome.exit_status == "Submitted"
    assert outcome.reward == 0.0
    assert outcome.info["status"] == "tests_failed", outcome.info
    samples = [
        json.loads(line) for line in (cfg.run_dir / "pool_stats.jsonl").read_text().splitlines()
    ]
    assert samples and all(s["limits"] == {"limit": 20, "per_host": 10} for s in samples), samples[
        :1
    ]


async def test_unknown_task_id_is_a_clear_error(tmp_path: Path) -> None:
    cfg = config(tmp_path, ModelSpec("oracle"), ["no-such-task"])
    with pytest.raises(LookupError, match="no-such-task"):
        await run_fleet(cfg)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--dataset", "nope"], "unknown dataset"),
        (["run", "--split", "nope"], "no split"),
        (["run", "--model", "gpt"], "unknown model"),
        (["tasks", "show", "nope"], "no task"),
    ],
)
def test_cli_rejects_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], needle: str
) -> None:
    """In process (the CLI's own exit path; test_cli_servers runs the real program)."""
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert out.exit_code == 2, (args, out.output)
    assert needle in out.stderr and "Traceback" not in out.output, (args, out.output)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_cli_tasks_list_and_show() -> None:
    out = subprocess.run(
        [AGENTFLEET, "tasks", "list"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "dedupe-pairs" in out and "anagram-groups" in out
    out = subprocess.run(
        [AGENTFLEET, "tasks", "show", "dedupe-pairs"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "python3 workload.py" in out


FINISHES = "sku-diff"  # the one task of a stopped run that has finished: its repo has inventory.py
SLEEPERS = ["dedupe-pairs", "byte-stats", "rr-scheduler"]


def start_sleeping_run(tmp_path: Path) -> tuple[subprocess.Popen[str], Path, Path]:
    """``agentfleet run`` (embedded servers, process backend, scripted model) where
    FINISHES submits and gets its result while the three SLEEPERS sit in ``sleep 300``.
    Returns once that is the case: (process, sandbox root, run folder)."""
    root, run_dir = tmp_path / "sandboxes", tmp_path / "run"
    replies = [
        bash_reply("wait", "[ -e inventory.py ] || sleep 300"),
        bash_reply("done", f"echo {SUBMIT_SENTINEL}"),
    ]
    (tmp_path / "r.json").write_text(json.dumps(replies))
    args = [AGENTFLEET, "run", "--model", f"scripted:{tmp_path / 'r.json'}", "--workers", "4"]
    args += ["--sandbox-root", str(root), "--run-dir", str(run_dir), "--eval-repeats", "1"]
    for task in [FINISHES, *SLEEPERS]:
        args += ["--task", task]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    results = run_dir / "results.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            finished = results.exists() and FINISHES in results.read_text()
            if finished and sandboxes_running(root, "sleep") == len(SLEEPERS):
                return proc, root, run_dir
            time.sleep(0.2)
    except BaseException:
        proc.kill()
        raise
    proc.kill()
    _, err = proc.communicate()
    pytest.fail(f"the run never got to one result and three sleeping agents: {err[-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code", "note"),
    [(signal.SIGINT, 130, "interrupted:"), (signal.SIGTERM, 143, "interrupted by SIGTERM:")],
    ids=["SIGINT", "SIGTERM"],
)
def test_stop_signal_deletes_sandboxes_and_keeps_results(
    tmp_path: Path, signum: int, code: int, note: str
) -> None:
    """Ctrl-C, and SIGTERM (timeout, systemd, Kubernetes, Slurm): a graceful stop."""
    proc, root, run_dir = start_sleeping_run(tmp_path)
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(leftovers(root)) == len(SLEEPERS)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err[-3000:]
    assert note in err and f"--resume {run_dir}" in err
    assert leftovers(root) == []  # every sandbox deleted
    assert sandbox_processes(root) == {}  # and every command in it
    _, alive = psutil.wait_procs(children, timeout=5)
    assert [p for p in alive if not zombie(p)] == [], alive  # nothing of the run is left
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert [r["instance_id"] for r in records] == [FINISHES]  # the finished task is kept
    assert records[0]["exit_status"] == "Submitted"
    assert not (run_dir / "summary.json").exists()  # written only by a run that completes


@pytest.mark.slow
async def test_fleet_over_mock_llm_with_injected_errors(tmp_path: Path) -> None:
    """A fleet over real HTTP to the mock LLM: 30% of calls fail (429, 500, dropped
    connection), every task is still solved like the oracle, and the cost and token totals
    in the results match what the mock reported."""
    app = create_mock_llm_app(error_rate=0.3, seed=7, cost_per_call=0.001)
    async with serve_in_loop(app) as mock:
        retry = RetryPolicy(attempts=10, wait_min=0.01, wait_max=0.05, budget_s=60)
        spec = ModelSpec("openai/mock-oracle", url=f"{mock.url}/v1", options={"retry": retry})
        cfg = config(tmp_path, spec, ["rr-scheduler", "sku-diff"])
        outcomes = await run_fleet(cfg)
        async with HttpPool() as pool:
            stats = (await pool.request("GET", f"{mock.url}/stats")).json()
    assert stats["errors_total"] > 0  # errors were injected, and survived
    for o in outcomes:
        assert o.exit_status == "Submitted" and o.info["status"] == "ok", o
        assert o.reward > 0
    assert sum(o.cost for o in outcomes) == pytest.approx(0.001 * stats["completions"])
    trajs = [
        json.loads(p.read_text())["info"]["model_stats"]
        for p in (cfg.run_dir / "trajectories").glob("*.traj.json")
    ]
    assert sum(t["api_calls"] for t in trajs) == stats["completions"]
    assert sum(t["prompt_tokens"] for t in trajs) == stats["prompt_tokens"]
    assert sum(t["completion_tokens"] for t in trajs) == stats["completion_tokens"]


async def test_agent_cancelled_during_create_deletes_its_sandbox(tmp_path: Path) -> None:
    """Ctrl-C while ``sandboxes.create`` is in flight: the runner chose the id, so its
    ``finally`` deletes the sandbox even though create never answered (here the server side
    goes on creating, as a remote server that missed the disconnect would)."""
    from typing import Any

    from agentfleet.fleet.runner import ResultsWriter, run_one
    from agentfleet.sandbox import CreateSandbox, SandboxInfo, SandboxService
    from agentfleet.tasks import load_dataset

    class Detached:
        """The service, with creations that go on when their caller is cancelled."""

        def __init__(self, svc: SandboxService) -> None:
            self.svc = svc
            self.pending: list[asyncio.Future[SandboxInfo]] = []

        async def create(self, req: CreateSandbox) -> SandboxInfo:
            self.pending.append(asyncio.ensure_future(self.svc.create(req)))
            return await asyncio.shield(self.pending[-1])

        def __getattr__(self, name: str) -> Any:
            return getattr(self.svc, name)

    backend = SlowCreate(tmp_path / "sandboxes")
    async with SandboxService(backend, reap_period_s=0) as svc:
        sandboxes = Detached(svc)
        cfg = config(tmp_path, ModelSpec("oracle"), ["dedupe-pairs"])
        task = await asyncio.to_thread(lambda: load_dataset(cfg.dataset).task("dedupe-pairs"))
        agent = asyncio.create_task(
            run_one(task, cfg, sandboxes, "http://127.0.0.1:9", ResultsWriter(cfg.run_dir))
        )
        await asyncio.wait_for(backend.entered.wait(), 30)
        agent.cancel()
        await asyncio.sleep(0.2)  # the runner's finally is waiting on the delete now
        backend.go.set()  # the creation completes, and is undone
        with pytest.raises(asyncio.CancelledError):
            await agent
        await asyncio.gather(*sandboxes.pending, return_exceptions=True)
        assert svc.list() == [] and leftovers(tmp_path / "sandboxes") == []
        assert svc.stats.created_total == 0 and svc.stats.deleted_total == 1


def test_agent_cpus_are_those_no_evaluation_worker_owns(tmp_path: Path) -> None:
    from agentfleet.evaluation.pinning import available_cpus
    from agentfleet.fleet.servers import agent_cpus

    have = tuple(available_cpus())
    cfg = config(tmp_path, ModelSpec("oracle"), ["sku-diff"])
    assert agent_cpus(cfg) is None  # auto: the workers take every CPU
    cfg.eval_workers = 1
    assert agent_cpus(cfg) == (have[1:] or None)
    cfg.eval_url = "http://127.0.0.1:9"
    assert agent_cpus(cfg) is None  # another server's workers: nothing known here


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_agents_commands_run_off_the_evaluation_workers_cpus(tmp_path: Path) -> None:
    """One embedded evaluation worker pinned to the first CPU: the agent's commands run on
    the others (the command reads its own affinity, the trajectory keeps the output)."""
    cfg = config(tmp_path, scripted(tmp_path, "grep Cpus_allowed_list /proc/self/status"), [])
    cfg.task_ids, cfg.eval_workers = ["sku-diff"], 1
    (outcome,) = asyncio.run(run_fleet(cfg))
    assert outcome.exit_status == "Submitted", outcome
    traj = (cfg.run_dir / "trajectories" / "sku-diff.traj.json").read_text()
    rest = sorted(os.sched_getaffinity(0))[1:]
    want = str(rest[0]) if len(rest) == 1 else f"{rest[0]}-{rest[-1]}"
    assert f"Cpus_allowed_list:\\t{want}" in traj, traj[-2000:]


def test_an_agent_that_raises_keeps_its_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox lost mid-run (a 404 on exec) ends the light agent by an exception: the
    task fails, and its trajectory still holds the messages so far (it had none)."""
    from agentfleet.agent.light import LightAgent
    from agentfleet.sandbox import SandboxError

    async def lost(self: LightAgent) -> str:
        self._add("assistant", "ls")
        raise SandboxError("no sandbox sb-gone", 404)

    monkeypatch.setattr(LightAgent, "_loop", lost)
    cfg = config(tmp_path, scripted(tmp_path, "ls"), ["sku-diff"])
    (outcome,) = asyncio.run(run_fleet(cfg))
    assert outcome.error == "SandboxError: no sandbox sb-gone", outcome
    traj = json.loads((cfg.run_dir / "trajectories" / "sku-diff.traj.json").read_text())
    assert [m["role"] for m in traj["messages"]] == ["system", "user", "assistant"]
