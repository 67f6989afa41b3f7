"""LightAgent against a real shell in a temporary folder."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agentfleet.agent import AgentConfig, LightAgent, parse_action
from agentfleet.models import SUBMIT_SENTINEL, ModelError, ScriptedModel
from agentfleet.models.offline import bash_reply
from agentfleet.tasks import Task


class ShellEnv:
    """Runs commands with bash in a folder: the smallest real environment."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.commands: list[str] = []

    async def aexecute(
        self, command: str, cwd: str = "", timeout: float | None = None
    ) -> dict[str, Any]:
        self.commands.append(command)
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            command,
            cwd=self.root,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        return {"output": out.decode(), "returncode": proc.returncode}


def make_task(tmp_path: Path) -> Task:
    return Task(
        id="t1",
        dataset="mini",
        prompt="Make it fast.",
        test_cmd="true",
        workload_cmd="true",
        task_dir=tmp_path,
    )


def test_parse_action_counts_blocks() -> None:
    assert parse_action("x\n```bash\nls\n```\n") == ["ls"]
    assert parse_action("no block") == []
    assert len(parse_action("```bash\na\n```\n```bash\nb\n```")) == 2


async def test_agent_runs_commands_and_submits(tmp_path: Path) -> None:
    env = ShellEnv(tmp_path)
    model = ScriptedModel(
        [
            bash_reply("write", "echo hello > out.txt && cat out.txt"),
            bash_reply("submit", f"echo {SUBMIT_SENTINEL}"),
        ]
    )
    result = await LightAgent(model, env, make_task(tmp_path), AgentConfig()).run()
    assert result.exit_status == "Submitted"
    assert result.steps == 2
    assert (tmp_path / "out.txt").read_text() == "hello\n"
    observation = result.messages[3]["content"]
    assert "<returncode>0</returncode>" in observation and "hello" in observation
    assert "Make it fast." in result.messages[1]["content"]


async def test_format_error_is_fed_back(tmp_path: Path) -> None:
    model = ScriptedModel(["I forgot the block", bash_reply("ok", f"echo {SUBMIT_SENTINEL}")])
    result = await LightAgent(model, ShellEnv(tmp_path), make_task(tmp_path), AgentConfig()).run()
    assert result.exit_status == "Submitted"
    assert "exactly one" in result.messages[3]["content"]


async def test_step_limit(tmp_path: Path) -> None:
    model = ScriptedModel([bash_reply("loop", "true")] * 5)
    cfg = AgentConfig(step_limit=3)
    result = await LightAgent(model, ShellEnv(tmp_path), make_task(tmp_path), cfg).run()
    assert result.exit_status == "LimitsExceeded"
    assert result.steps == 3


async def test_time_limit(tmp_path: Path) -> None:
    model = ScriptedModel([bash_reply("slow", "true")] * 50, delay_s=0.2)
    cfg = AgentConfig(time_limit_s=0.5)
    result = await LightAgent(model, ShellEnv(tmp_path), make_task(tmp_path), cfg).run()
    assert result.exit_status == "TimeLimitExceeded"


async def test_model_error_ends_agent_with_its_status(tmp_path: Path) -> None:
    model = ScriptedModel([bash_reply("one", "true")])
    result = await LightAgent(model, ShellEnv(tmp_path), make_task(tmp_path), AgentConfig()).run()
    assert result.exit_status == "OutOfReplies"
    assert "ran out" in result.error


def test_scripted_yaml(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("replies:\n  - one\n  - two\n")
    assert ScriptedModel.from_yaml(path).replies == ["one", "two"]
    path.write_text("{a: 1}\n")
    with pytest.raises(ValueError):
        ScriptedModel.from_yaml(path)


def test_agent_config_overrides_templates(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("step_limit: 7\ninstance_template: 'DO {{ task.id }}'\n")
    cfg = AgentConfig.from_yaml(path)
    assert cfg.step_limit == 7
    assert cfg.templates["instance_template"] == "DO {{ task.id }}"
    assert "system_template" in cfg.templates
    assert isinstance(ModelError("x"), Exception)
