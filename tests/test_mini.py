"""mini-swe-agent 2.x on agentfleet: its DefaultAgent over RemoteDockerEnvironment, against
a real sandbox server (process backend) on 127.0.0.1 port 0."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool, sandboxes_running, served_in_thread

from agentfleet.agent import AgentConfig
from agentfleet.fleet.mini_agent import run_mini
from agentfleet.models.base import Message, ModelReply
from agentfleet.models.mock_server import create_mock_llm_app
from agentfleet.models.offline import ScriptedModel, bash_reply
from agentfleet.sandbox import ProcessBackend
from agentfleet.sandbox.base import CreateSandbox
from agentfleet.sandbox.client import SandboxClient
from agentfleet.sandbox.server import create_app
from agentfleet.serving import serve_in_loop
from agentfleet.tasks import Task

SENTINEL = "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"
ENV_CLASS = "agentfleet.sandbox.env.RemoteDockerEnvironment"
AGENTFLEET = str(Path(sys.executable).with_name("agentfleet"))


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
    repo = ds / "t1" / "repo"
    repo.mkdir(parents=True)
    (ds / "dataset.yaml").write_text("name: minitest\nsplits:\n  test: [t1]\n")
    (ds / "t1" / "task.yaml").write_text(
        "prompt: make it fast\ntest_cmd: python3 main.py\nworkload_cmd: python3 main.py\n"
    )
    (repo / "main.py").write_text("print('hello')\n")
    return str(ds)


@pytest.fixture
def sandbox_url(tmp_path: Path) -> Iterator[str]:
    # the dataset fixture's folder (tmp_path/ds) is under this server's dataset root
    app = create_app(ProcessBackend(tmp_path / "sb"), dataset_roots=[tmp_path])
    with served_in_thread(app) as url:
        yield url


def _wait_for_no_sandboxes(url: str, within_s: float = 20.0) -> list[Any]:
    """The server's sandboxes, polled until there are none or ``within_s`` passed."""
    deadline = time.monotonic() + within_s
    while True:
        with urllib.request.urlopen(f"{url}/sandboxes", timeout=10) as resp:
            listed = json.loads(resp.read())
        if not listed or time.monotonic() > deadline:
            return list(listed)
        time.sleep(0.1)


def inspector_messages(path: Path) -> list[dict[str, Any]]:
    """The messages mini-swe-agent's trajectory inspector loads from ``path``."""
    from minisweagent.run.utilities.inspector import TrajectoryInspector

    inspector = TrajectoryInspector([path])
    assert inspector.steps, f"the inspector could not load {path}"
    return list(inspector.messages)


def test_mini_default_agent_over_remote_environment(
    sandbox_url: str, dataset: str, tmp_path: Path
) -> None:
    from minisweagent.agents.default import DefaultAgent
    from minisweagent.environments import get_environment
    from minisweagent.models.test_models import DeterministicModel, make_output

    env: Any = get_environment(
        {"environment_class": ENV_CLASS, "base_url": sandbox_url, "task_id": "t1"}
        | {"dataset": dataset, "timeout": 30}
    )
    model = DeterministicModel(
        outputs=[
            make_output("look", [{"command": "cat main.py"}]),
            make_output("edit", [{"command": "sed -i s/hello/fast/ main.py"}]),
            make_output("submit", [{"command": f"echo {SENTINEL} && git diff"}]),
        ]
    )
    traj = tmp_path / "out" / "t1.traj.json"
    agent = DefaultAgent(
        model,
        env,
        system_template="You work in {{ sandbox_id }} on {{ system }}.",
        instance_template="{{ task }}",
        output_path=traj,
    )
    try:
        info = agent.run("make it fast")
        assert info["exit_status"] == "Submitted"
        assert "-print('hello')" in info["submission"] and "+print('fast')" in info["submission"]
        observation = agent.messages[3]  # system, user, assistant, the observation
        assert "print('hello')" in observation["content"]
        assert observation["extra"]["returncode"] == 0
        assert observation["extra"]["timed_out"] is False
        # read back through the sandbox API, not through the environment
        data = asyncio.run(SandboxClient(sandbox_url).read_file(env.sandbox_id, "main.py"))
        assert data == b"print('fast')\n"
    finally:
        env.cleanup()
    messages = inspector_messages(traj)
    assert messages[-1]["extra"]["exit_status"] == "Submitted"
    saved = agent.serialize()["info"]["config"]
    assert saved["environment_type"] == ENV_CLASS
    assert saved["environment"]["sandbox_id"] == env.sandbox_id


def test_execute_dict_and_string_forms(sandbox_url: str, dataset: str) -> None:
    from minisweagent.exceptions import Submitted

    from agentfleet.sandbox.env import RemoteDockerEnvironment

    with RemoteDockerEnvironment(base_url=sandbox_url, task_id="t1", dataset=dataset) as env:
        assert env.owns_sandbox
        v1 = env.execute("echo one")
        assert v1 == {"output": "one\n", "returncode": 0, "timed_out": False, "truncated": False}
        v2 = env.execute({"command": "sleep 5"}, timeout=0.5)
        assert v2["timed_out"] and v2["extra"]["timed_out"]
        assert "timed out" in v2["exception_info"]
        assert env.execute({"command": "exit 3"})["exception_info"] == ""
        # the sentinel only counts when the command succeeded, as in mini-swe-agent
        failed = env.execute({"command": f"echo {SENTINEL}; exit 1"})
        assert failed["returncode"] == 1
        with pytest.raises(Submitted) as raised:
            env.execute({"command": f"echo {SENTINEL} && echo the-patch"})
        (exit_message,) = raised.value.messages
        assert exit_message["extra"] == {"exit_status": "Submitted", "submission": "the-patch\n"}
        assert env.execute(f"echo {SENTINEL}")["returncode"] == 0  # 1.x string form: no raise
        with pytest.raises(ValueError, match="command"):
            env.execute({"cmd": "ls"})
        sid = env.sandbox_id
        assert env.get_template_vars(extra=1)["extra"] == 1
        assert env.get_template_vars()["sandbox_id"] == sid
    listed = asyncio.run(SandboxClient(sandbox_url).list())
    assert sid not in [i.sandbox_id for i in listed]  # owned: deleted on exit
    assert os.environ["MSWEA_SILENT_STARTUP"] == "1"


MINI_YAML = """\
agent:
  system_template: |
    You are a performance engineer. Call the bash tool; when done, call it with
    `echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT` alone.
  instance_template: |
    {{ task }}
  step_limit: 20
model:
  action_format: tool_call
  format_error_template: "Tool call error: {{ error }}"
environment:
  timeout: 120
  env:
    PAGER: cat
"""


@pytest.mark.slow
def test_cli_run_agent_mini_solves_every_task(tmp_path: Path) -> None:
    """``agentfleet run --agent mini`` over the oracle-backed mock LLM in tool-call mode
    (10% malformed calls): all 8 perf-lite test tasks solved; mini-swe-agent's loader reads
    every trajectory."""
    config = tmp_path / "mini.yaml"
    config.write_text(MINI_YAML)
    run_dir = tmp_path / "run"
    app = create_mock_llm_app(malformed_rate=0.1, seed=5, cost_per_call=0.002)
    with served_in_thread(app) as mock_url:
        args = [AGENTFLEET, "run", "--agent", "mini", "--agent-config", str(config)]
        args += ["--model", "openai/mock-oracle", "--model-url", f"{mock_url}/v1"]
        args += ["--workers", "4", "--eval-repeats", "1", "--run-dir", str(run_dir)]
        args += ["--sandbox-root", str(tmp_path / "sb")]
        env = {**os.environ, "MSWEA_SILENT_STARTUP": "1"}
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env
        )
        stats = asyncio.run(_mock_stats(mock_url))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(results) == 8
    for r in results:
        assert r["exit_status"] == "Submitted" and r["reward"] > 0, r
    assert stats["tool_call_replies"] == stats["completions"] > 0
    assert sum(r["cost"] for r in results) == pytest.approx(0.002 * stats["completions"])
    trajs = sorted((run_dir / "trajectories").glob("*.traj.json"))
    assert len(trajs) == 8
    for path in trajs:
        messages = inspector_messages(path)
        assert messages[-1]["extra"]["exit_status"] == "Submitted"
        data = json.loads(path.read_text())
        assert data["trajectory_format"] == "mini-swe-agent-1.1"
        assert data["info"]["config"]["agent_type"].endswith("mini_agent.FleetAgent")
        assert data["info"]["config"]["environment_type"] == ENV_CLASS
        assert data["info"]["reward"] > 0 and data["info"]["exit_status"] == "Submitted"
        assert "diff --git" in data["info"]["submission"]
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["agent"] == "mini" and saved["mini_config"]["model"]["action_format"]


async def _mock_stats(url: str) -> dict[str, Any]:
    from agentfleet.http import HttpPool

    async with HttpPool() as pool:
        data = (await pool.request("GET", f"{url}/stats")).json()
        assert isinstance(data, dict)
        return data


def test_cli_run_agent_mini_rejects_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent:\n  step_limit: 3\n")
    for args, message in [
        (["--agent", "mini", "--agent-config", str(bad)], "agent.system_template is missing"),
        (["--agent", "nope"], "unknown agent"),
        (["--agent", "mini", "--agent-config", str(tmp_path / "none.yaml")], "Could not find"),
    ]:
        proc = subprocess.run(
            [AGENTFLEET, "run", *args, "--run-dir", str(tmp_path / "r")],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "MSWEA_SILENT_STARTUP": "1"},
        )
        assert proc.returncode != 0 and message in proc.stderr + proc.stdout, proc.stderr


@pytest.mark.parametrize("action_format", ["tool_call", "text"])
def test_mini_model_from_yaml_against_the_mock(action_format: str) -> None:
    """MiniModel chosen by a mini-swe-agent config (``model_class``), in both modes: the
    reply's actions, a malformed reply as mini-swe-agent's FormatError (cost kept)."""
    from minisweagent.exceptions import FormatError
    from minisweagent.models import get_model

    app = create_mock_llm_app(seed=2, cost_per_call=0.5)
    with served_in_thread(app) as url:
        config = {
            "model_class": "agentfleet.models.mini.MiniModel",
            "model_name": "openai/mock-oracle",
            "base_url": f"{url}/v1",
            "action_format": action_format,
            "action_regex": r"```bash\s*\n(.*?)\n```",
            "model_kwargs": {"drop_params": True, "temperature": 0.0},
        }
        model: Any = get_model(config=config)
        user = model.format_message(role="user", content="an unknown task")
        message = model.query([user])
        assert message["extra"]["actions"][0]["command"] == f"echo {SENTINEL}"
        assert message["extra"]["cost"] == 0.5
        assert ("tool_calls" in message) == (action_format == "tool_call")
        observations = model.format_observation_messages(
            message, [{"output": "x", "returncode": 0, "exception_info": ""}], {}
        )
        assert observations[0]["role"] == ("tool" if action_format == "tool_call" else "user")
        app.state.mock.config.malformed_rate = 1.0
        if action_format == "tool_call":
            with pytest.raises(FormatError) as raised:
                model.query([user])
            assert raised.value.messages[0]["extra"]["cost"] == 0.5
        assert model.serialize()["info"]["config"]["model"]["action_format"] == action_format


def test_mini_model_refuses_tool_calls_from_a_text_only_model() -> None:
    from agentfleet.models.mini import MiniModel
    from agentfleet.models.offline import ScriptedModel

    with pytest.raises(ValueError, match="action_format: text"):
        MiniModel(model=ScriptedModel(["x"]))
    with pytest.raises(ValueError, match="openai/NAME with base_url"):
        MiniModel(model_name="openai/x")
    assert MiniModel(model=ScriptedModel(["x"]), action_format="text").config.action_format


def test_mini_batch_runner_process_instance(sandbox_url: str, tmp_path: Path) -> None:
    """mini-swe-agent's own SWE-bench batch runner (``process_instance``) with agentfleet's
    environment and model from its config: a perf-lite task solved, preds.json written."""
    from minisweagent.run.benchmarks.swebench import process_instance
    from minisweagent.run.benchmarks.utils.batch_progress import RunBatchProgressManager

    from agentfleet.models.mock_server import create_mock_llm_app
    from agentfleet.tasks import load_dataset

    task = load_dataset("perf-lite").tasks("test")[0]
    with served_in_thread(create_mock_llm_app(seed=4)) as llm_url:
        config = {
            "agent": {"system_template": "Use the bash tool.", "instance_template": "{{task}}"},
            "model": {
                "model_class": "agentfleet.models.mini.MiniModel",
                "model_name": "openai/mock-oracle",
                "base_url": f"{llm_url}/v1",
            },
            "environment": {
                "environment_class": ENV_CLASS,
                "base_url": sandbox_url,
                "task_id": task.id,
                "dataset": "perf-lite",
            },
        }
        instance = {"instance_id": task.id, "problem_statement": task.prompt}
        out = tmp_path / "batch"
        process_instance(instance, out, config, RunBatchProgressManager(1))
    # the runner never calls env.cleanup(): the environment deletes its sandbox when it goes
    gc.collect()
    assert _wait_for_no_sandboxes(sandbox_url) == []
    preds = json.loads((out / "preds.json").read_text())
    assert preds[task.id]["model_name_or_path"] == "openai/mock-oracle"
    messages = inspector_messages(out / task.id / f"{task.id}.traj.json")
    assert messages[-1]["extra"]["exit_status"] == "Submitted"
    assert "git apply" in messages[2]["tool_calls"][0]["function"]["arguments"]


async def test_cancelled_mini_agent_stops_before_its_next_step(
    sandbox_url: str, dataset: str
) -> None:
    """Ctrl-C cancels run_mini between two steps: the agent ends before its next step
    instead of playing all its remaining steps."""
    replies = [bash_reply("wait", "sleep 0.2")] * 50
    model = SignallingModel(replies)
    client = SandboxClient(sandbox_url)
    info = await client.create(CreateSandbox(task_id="t1", dataset=dataset))
    agent = asyncio.create_task(
        run_mini(
            MINI_TEXT, model, client, info.sandbox_id, _task(dataset), AgentConfig(step_limit=100)
        )
    )
    await _cancel_mini_when(model.second_call.is_set, agent)
    assert model.stats.calls < len(replies)
    await client.delete(info.sandbox_id)


async def _cancel_mini_when(ready: Any, agent: asyncio.Task[Any]) -> float:
    """Cancel ``agent`` (run_mini) once ``ready()``; the seconds its thread took to end."""
    while not ready():
        assert not agent.done()
        await asyncio.sleep(0.05)
    agent.cancel()
    with pytest.raises(asyncio.CancelledError):
        await agent
    start = time.monotonic()
    await asyncio.get_running_loop().shutdown_default_executor()  # the thread has ended
    return time.monotonic() - start


@asynccontextmanager
async def _mock_llm(**options: Any) -> AsyncIterator[tuple[str, Any]]:
    """The mock LLM on this loop (its URL and app); a reply still to come is dropped."""
    app = create_mock_llm_app(**options)
    async with serve_in_loop(app) as running:
        yield running.url, app
        for request in running.server.server_state.tasks:
            request.cancel()  # a stalled reply: the server's shutdown would wait for it


MINI_TEXT = {
    "agent": {"system_template": "s", "instance_template": "{{ task }}"},
    "model": {"action_format": "text", "action_regex": r"```bash\s*\n(.*?)\n```"},
}


async def test_cancelled_mini_agent_cancels_its_model_call(sandbox_url: str, dataset: str) -> None:
    """Ctrl-C / SIGTERM while the model's reply is 60 s away: the call is cancelled and the
    agent's thread ends at once, not once the reply came."""
    from agentfleet.models.openai_chat import OpenAIChatModel

    client = SandboxClient(sandbox_url)
    info = await client.create(CreateSandbox(task_id="t1", dataset=dataset))
    async with _mock_llm(latency=60.0) as (url, app):
        model = OpenAIChatModel("mock-oracle", f"{url}/v1")
        config = {"agent": MINI_TEXT["agent"]}  # tool calls
        agent = asyncio.create_task(
            run_mini(config, model, client, info.sandbox_id, _task(dataset), AgentConfig())
        )
        took = await _cancel_mini_when(lambda: app.state.mock.stats.in_flight == 1, agent)
        assert took < 5.0, f"the thread ended {took:.1f} s after the cancel"
        assert model.stats.calls == 0  # no reply came
    await client.delete(info.sandbox_id)


async def test_cancelled_mini_agent_cancels_its_command(
    sandbox_url: str, dataset: str, tmp_path: Path
) -> None:
    """Ctrl-C / SIGTERM while a command runs (``sleep 60``): its exec call is cancelled and
    the thread ends at once; no call after it (the runner deletes the sandbox)."""
    model = ScriptedModel([bash_reply("wait", "sleep 60")] * 3)
    client = SandboxClient(sandbox_url)
    info = await client.create(CreateSandbox(task_id="t1", dataset=dataset))
    agent = asyncio.create_task(
        run_mini(MINI_TEXT, model, client, info.sandbox_id, _task(dataset), AgentConfig())
    )
    took = await _cancel_mini_when(lambda: sandboxes_running(tmp_path / "sb", "sleep"), agent)
    assert took < 5.0, f"the thread ended {took:.1f} s after the cancel"
    assert model.stats.calls == 1
    await client.delete(info.sandbox_id)


def _task(dataset: str) -> Task:
    return Task(
        id="t1", dataset="d", prompt="p", test_cmd="true", workload_cmd="true", task_dir=dataset
    )


@pytest.mark.slow
async def test_sigterm_stops_a_mini_run_at_once(tmp_path: Path) -> None:
    """SIGTERM to ``agentfleet run --agent mini`` while one agent waits 60 s for its model
    (the mock's first call stalls), the other done: exit 143 within seconds (it waited for
    the reply, then retried commands on the stopped sandbox server), the result kept."""
    run_dir = tmp_path / "run"
    async with _mock_llm(stall_calls=1, stall_s=60.0) as (url, app):
        args = [sys.executable, "-m", "agentfleet", "run", "--agent", "mini", "-w", "2"]
        args += ["--model", "openai/mock-oracle", "--model-url", f"{url}/v1"]
        args += ["-t", "dedupe-pairs", "-t", "rr-scheduler", "--eval-repeats", "1"]
        args += ["--run-dir", str(run_dir), "--sandbox-root", str(tmp_path / "sb")]
        args += ["-v", "--progress", "none"]  # -v: the retries are logged
        log, results = tmp_path / "run.log", run_dir / "results.jsonl"
        with log.open("w") as out:
            proc = await asyncio.create_subprocess_exec(*args, stdout=out, stderr=out, cwd=tmp_path)
        try:
            while not (results.exists() and results.read_text().strip()):
                assert proc.returncode is None, log.read_text()[-3000:]
                await asyncio.sleep(0.1)
            assert app.state.mock.stats.in_flight == 1  # the other agent still waits
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 120)
            took = time.monotonic() - start
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    err = log.read_text()
    assert proc.returncode == 143, err[-3000:]
    assert took < 10.0, f"exit {took:.1f} s after SIGTERM"
    assert "retrying" not in err
    (record,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert record["exit_status"] == "Submitted" and record["state"] == "done"


class SignallingModel(ScriptedModel):
    """A scripted model that tells another thread when its second reply went out."""

    def __init__(self, replies: list[str]) -> None:
        super().__init__(replies)
        self.second_call = threading.Event()

    async def query(self, messages: list[Message]) -> ModelReply:
        reply = await super().query(messages)
        if self.stats.calls >= 2:
            self.second_call.set()
        return reply


def test_resume_keeps_the_mini_agent_and_its_config(tmp_path: Path) -> None:
    from agentfleet.fleet.run import RunRequest, build_config

    (tmp_path / "mini.yaml").write_text(MINI_YAML)
    cfg, _ = build_config(
        RunRequest(agent="mini", agent_config=tmp_path / "mini.yaml", run_dir=tmp_path / "r")
    )
    assert cfg.mini is not None and cfg.mini["agent"]["step_limit"] == 20
    saved = {"agent": "mini", "mini_config": cfg.mini, "model": "oracle"}
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text(json.dumps(saved))
    resumed, _ = build_config(RunRequest(resume=tmp_path / "r"))
    assert resumed.mini == cfg.mini
    light, _ = build_config(RunRequest(run_dir=tmp_path / "l"))
    assert light.mini is None
    default, _ = build_config(RunRequest(agent="mini", run_dir=tmp_path / "d"))
    assert default.mini is not None and "system_template" in default.mini["agent"]  # mini.yaml
