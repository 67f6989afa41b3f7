"""mini-swe-agent 2.x on agentfleet: its DefaultAgent over RemoteDockerEnvironment, against
a real sandbox server (process backend) on 127.0.0.1 port 0."""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool, served_in_thread

from agentfleet.sandbox import ProcessBackend
from agentfleet.sandbox.client import SandboxClient
from agentfleet.sandbox.server import create_app

SENTINEL = "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"
ENV_CLASS = "agentfleet.sandbox.env.RemoteDockerEnvironment"


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
    with served_in_thread(create_app(ProcessBackend(tmp_path / "sb"))) as url:
        yield url


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
