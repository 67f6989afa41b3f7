"""``--agent mini`` and the run's limits: a cost limit ends the agent cleanly (as for
LightAgent), and the run's limits hold whatever the mini-swe-agent YAML sets."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool, served_in_thread

from agentfleet.agent import AgentConfig
from agentfleet.fleet.mini_agent import MiniResult, _agent_settings, run_mini
from agentfleet.models.mock_server import create_mock_llm_app
from agentfleet.models.offline import ScriptedModel, bash_reply
from agentfleet.sandbox import ProcessBackend
from agentfleet.sandbox.base import CreateSandbox
from agentfleet.sandbox.client import SandboxClient
from agentfleet.sandbox.server import create_app
from agentfleet.tasks import Task


@pytest.fixture(autouse=True)
def _mini(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip without mini-swe-agent (fail under CI=true); keep its start-up quiet and its
    global config out of the home folder."""
    require_tool(
        "minisweagent",
        "runs mini-swe-agent's own agent over agentfleet's environment",
        available=importlib.util.find_spec("minisweagent") is not None,
    )
    monkeypatch.setenv("MSWEA_SILENT_STARTUP", "1")
    monkeypatch.setenv("MSWEA_GLOBAL_CONFIG_DIR", str(tmp_path_factory.mktemp("mswea")))


@pytest.fixture
def dataset(tmp_path: Path) -> str:
    ds = tmp_path / "ds"
    (ds / "t1" / "repo").mkdir(parents=True)
    (ds / "dataset.yaml").write_text("name: minitest\nsplits:\n  test: [t1]\n")
    (ds / "t1" / "task.yaml").write_text("prompt: p\ntest_cmd: 'true'\nworkload_cmd: 'true'\n")
    return str(ds)


@pytest.fixture
def sandbox_url(tmp_path: Path) -> Iterator[str]:
    app = create_app(ProcessBackend(tmp_path / "sb"), dataset_roots=[tmp_path])
    with served_in_thread(app) as url:
        yield url


@pytest.mark.parametrize(
    ("flag", "status", "limit"),
    [("--cost-limit", "CostLimitExceeded", 1.0), ("--run-cost-limit", "RunCostLimitExceeded", 3.0)],
)
def test_cost_limit_ends_a_mini_agent_cleanly(
    tmp_path: Path, flag: str, status: str, limit: float
) -> None:
    """A cost limit of $1 at $1 a call: the agent ends after one call with the limit's exit
    status, recorded done (not failed: ``--rerun-failed`` would spend again), exit code 0,
    as LightAgent records it. The agent's limit is the stricter of the run's and mini.yaml's
    ($3)."""
    run_dir = tmp_path / "run"
    with served_in_thread(create_mock_llm_app(cost_per_call=1.0)) as url:
        args = [sys.executable, "-m", "agentfleet", "run", "--agent", "mini"]
        args += ["--model", "openai/mock-oracle", "--model-url", f"{url}/v1"]
        args += [flag, "1", "-t", "dedupe-pairs", "--eval-repeats", "1"]
        args += ["--run-dir", str(run_dir), "--sandbox-root", str(tmp_path / "sb")]
        args += ["--progress", "none"]
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=dict(os.environ)
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert record["exit_status"] == status
    assert record["error"] == "" and record["state"] == "done"
    assert record["steps"] == 1 and record["cost"] == 1.0  # the refused call is no step
    (path,) = (run_dir / "trajectories").glob("*.traj.json")
    data = json.loads(path.read_text())
    last = data["messages"][-1]
    assert last["role"] == "exit" and "cost limit $1" in last["content"]
    assert last["extra"]["exit_status"] == status
    assert "traceback" not in last["extra"]
    agent = data["info"]["config"]["agent"]  # the limits in force
    assert (agent["cost_limit"], agent["step_limit"]) == (limit, 30)  # mini.yaml: $3, none


@pytest.mark.parametrize(
    ("yaml", "run", "in_force"),
    [
        ({}, {}, (30, 900, 0)),  # the run's defaults; mini-swe-agent's 0: none
        (
            {"step_limit": 0, "cost_limit": 3.0},
            {"step_limit": 5, "cost_limit": 10.0},
            (5, 900, 3.0),
        ),
        ({"step_limit": 8, "wall_time_limit_seconds": 60}, {"step_limit": 5}, (5, 60, 0)),
        ({"step_limit": 4, "cost_limit": 0}, {"step_limit": 5, "cost_limit": 2.0}, (4, 900, 2.0)),
        ({"wall_time_limit_seconds": 0}, {"time_limit_s": 0.5}, (30, 1, 0)),  # whole seconds
    ],
)
def test_the_stricter_limit_is_in_force(
    yaml: dict[str, Any], run: dict[str, Any], in_force: tuple[float, float, float]
) -> None:
    config = {"agent": {"system_template": "s", "instance_template": "i", **yaml}}
    settings = _agent_settings(config, AgentConfig(**run))
    got = (settings["step_limit"], settings["wall_time_limit_seconds"], settings["cost_limit"])
    assert got == in_force
    assert settings["system_template"] == "s"


def test_run_limits_hold_over_mini_yaml(dataset: str, sandbox_url: str, tmp_path: Path) -> None:
    """mini-swe-agent's built-in mini.yaml (step_limit 0: none) with a run's step limit of
    3: the agent stops after 3 steps, and its trajectory says 3 (it ran 50 before)."""
    from agentfleet.fleet.run import RunRequest, build_config

    cfg, _ = build_config(RunRequest(agent="mini", step_limit=3, run_dir=tmp_path / "r"))
    assert cfg.mini is not None and cfg.mini["agent"]["step_limit"] == 0
    cfg.mini["model"] = {"action_format": "text", "action_regex": r"```bash\s*\n(.*?)\n```"}
    model = ScriptedModel([bash_reply("look", "true")] * 50)
    task = Task(
        id="t1", dataset="d", prompt="p", test_cmd="true", workload_cmd="true", task_dir=dataset
    )

    async def go() -> MiniResult:
        client = SandboxClient(sandbox_url)
        info = await client.create(CreateSandbox(task_id="t1", dataset=dataset))
        try:
            return await run_mini(cfg.mini or {}, model, client, info.sandbox_id, task, cfg.agent)
        finally:
            await client.delete(info.sandbox_id)

    result = asyncio.run(go())
    assert (result.exit_status, result.steps, result.error) == ("LimitsExceeded", 3, "")
    assert model.stats.calls == 3
    assert result.trajectory["info"]["config"]["agent"]["step_limit"] == 3


async def _run_mini(
    sandbox_url: str, dataset: str, model: ScriptedModel, limits: AgentConfig, **agent: Any
) -> MiniResult:
    """``model`` as a mini-swe-agent (its YAML's agent section plus ``agent``) on a task of
    ``dataset``, in a sandbox of the server at ``sandbox_url``, deleted afterwards."""
    client = SandboxClient(sandbox_url)
    info = await client.create(CreateSandbox(task_id="t1", dataset=dataset))
    config = {
        "agent": {"system_template": "s", "instance_template": "{{ task }}", **agent},
        "model": {"action_format": "text", "action_regex": r"```bash\s*\n(.*?)\n```"},
    }
    task = Task(
        id="t1", dataset="d", prompt="p", test_cmd="true", workload_cmd="true", task_dir=dataset
    )
    try:
        async with asyncio.timeout(30):
            return await run_mini(config, model, client, info.sandbox_id, task, limits)
    finally:
        await client.delete(info.sandbox_id)


async def test_the_time_limit_cuts_a_mini_agents_call_in_flight(
    sandbox_url: str, dataset: str
) -> None:
    """At the run's time limit the agent's call in flight (a command of 60 s here) is
    cancelled and the agent ends ``TimeLimitExceeded``, as LightAgent does, with its
    trajectory (mini-swe-agent checks its own limit only between calls)."""
    model = ScriptedModel([bash_reply("wait", "sleep 60")] * 3)
    result = await _run_mini(sandbox_url, dataset, model, AgentConfig(time_limit_s=1.0))
    assert isinstance(result, MiniResult)
    assert result.exit_status == "TimeLimitExceeded" and not result.error, result
    assert result.duration_s < 10, result.duration_s
    assert result.trajectory["messages"], result.trajectory


async def test_mini_agents_own_time_limit_ends_time_limit_exceeded(
    sandbox_url: str, dataset: str
) -> None:
    """The YAML's wall_time_limit_seconds, stricter than the run's, is DefaultAgent's own
    check between calls: the agent ends with LightAgent's ``TimeLimitExceeded`` (not
    mini-swe-agent's ``TimeExceeded``), as at the run's own time limit."""
    model = ScriptedModel([bash_reply("wait", "sleep 1.2")] * 5)
    limits = AgentConfig(time_limit_s=60.0)
    result = await _run_mini(sandbox_url, dataset, model, limits, wall_time_limit_seconds=1)
    assert (result.exit_status, result.steps, result.error) == ("TimeLimitExceeded", 1, "")
    assert result.trajectory["info"]["exit_status"] == "TimeLimitExceeded"
