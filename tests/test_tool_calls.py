"""Native tool calls: LightAgent and the OpenAI-compatible model with the ``bash`` tool,
the mock LLM answering in both modes and injecting malformed calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_agent import ShellEnv, make_task

from agentfleet.agent import AgentConfig, LightAgent
from agentfleet.fleet.runner import FleetConfig, run_fleet
from agentfleet.http import HttpPool, RetryPolicy
from agentfleet.models import SUBMIT_SENTINEL, ModelReply, ModelSpec
from agentfleet.models.base import Message, ModelStats
from agentfleet.models.mock_server import create_mock_llm_app
from agentfleet.models.openai_chat import OpenAIChatModel
from agentfleet.models.tool_calls import ToolCallError, parse_tool_calls
from agentfleet.serving import serve_in_loop
from agentfleet.tasks import Task, load_dataset


def call(command: str, ident: str, *, name: str = "bash", raw: str | None = None) -> dict[str, Any]:
    arguments = raw if raw is not None else json.dumps({"command": command})
    return {"id": ident, "type": "function", "function": {"name": name, "arguments": arguments}}


class ToolScript:
    """Replays tool-call replies (a model in tool-call mode, offline)."""

    action_format = "tool_call"

    def __init__(self, replies: list[list[dict[str, Any]]]) -> None:
        self.name, self.replies, self.stats = "tool-script", replies, ModelStats()
        self.seen: list[list[Message]] = []

    async def query(self, messages: list[Message]) -> ModelReply:
        self.seen.append([dict(m) for m in messages])
        reply = ModelReply("THOUGHT", tool_calls=self.replies[self.stats.calls])
        self.stats.add(reply)
        return reply


def test_parse_tool_calls_names_each_problem() -> None:
    assert [a.command for a in parse_tool_calls([call("ls", "a"), call("pwd", "b")])] == [
        "ls",
        "pwd",
    ]
    for calls, problem in [
        ([], "No tool calls"),
        ([call("", "a", raw='{"command": "ls"')], "parsing tool call arguments"),
        ([call("ls", "a", name="python")], "Unknown tool 'python'"),
        ([call("", "a", raw='{"cmd": "ls"}')], "Missing 'command'"),
        ([call(" ", "a")], "Bad 'command' argument in bash tool call: the command is empty"),
        ([call("a\0b", "a")], "contains a NUL character"),
    ]:
        with pytest.raises(ToolCallError, match=problem):
            parse_tool_calls(calls)


async def test_light_agent_runs_several_calls_in_order_and_survives_format_errors(
    tmp_path: Path,
) -> None:
    model = ToolScript(
        [
            [call("echo a > f", "c1"), call("cat f", "c2")],
            [call("", "c3", raw='{"command": "rm f"')],  # not JSON: must not run
            [call("rm f", "c4", name="python")],  # unknown tool: must not run
            [],  # no call at all
            [call(f"echo {SUBMIT_SENTINEL}", "c5")],
        ]
    )
    env = ShellEnv(tmp_path)
    agent = LightAgent(model, env, make_task(tmp_path), AgentConfig())
    result = await agent.run()
    assert result.exit_status == "Submitted" and agent.format_errors == 3
    assert env.commands == ["echo a > f", "cat f", f"echo {SUBMIT_SENTINEL}"]
    assert (tmp_path / "f").read_text() == "a\n"
    roles = [(m["role"], m.get("tool_call_id")) for m in result.messages]
    assert roles == [
        ("system", None),
        ("user", None),
        ("assistant", None),
        ("tool", "c1"),
        ("tool", "c2"),
        ("assistant", None),
        ("tool", "c3"),
        ("assistant", None),
        ("tool", "c4"),
        ("assistant", None),
        ("user", None),
        ("assistant", None),
    ]
    assert "a" in result.messages[4]["content"]  # c2 saw what c1 wrote
    assert "Tool call error" in result.messages[6]["content"]
    assert "Unknown tool 'python'" in result.messages[8]["content"]
    assert "No tool calls" in result.messages[10]["content"]
    assert result.messages[2]["tool_calls"][1]["id"] == "c2"  # the calls stay in the history
    assert "bash` tool" in result.messages[0]["content"]  # the tool-call system prompt


def test_action_format_setting_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("action_format: tool_call\n")
    assert AgentConfig.from_yaml(path).action_format == "tool_call"
    path.write_text("action_format: xml\n")
    with pytest.raises(ValueError, match="action_format must be one of"):
        AgentConfig.from_yaml(path)


async def test_model_and_mock_in_both_modes() -> None:
    app = create_mock_llm_app(seed=1)
    messages: list[Message] = [{"role": "user", "content": "unknown task"}]
    async with serve_in_loop(app) as mock, HttpPool() as pool:
        text = OpenAIChatModel("mock-oracle", f"{mock.url}/v1", pool=pool)
        tools = OpenAIChatModel("m", f"{mock.url}/v1", pool=pool, action_format="tool_call")
        assert "tools" not in text.request_body(messages)
        assert tools.request_body(messages)["tools"][0]["function"]["name"] == "bash"
        plain = await text.query(messages)
        called = await tools.query(messages)
        stats = (await pool.request("GET", f"{mock.url}/stats")).json()
    assert plain.tool_calls is None and "```bash" in plain.content
    assert called.tool_calls is not None and "```" not in called.content
    (action,) = parse_tool_calls(called.tool_calls)
    assert action.command == f"echo {SUBMIT_SENTINEL}"
    assert stats["tool_call_replies"] == 1 and stats["completions"] == 2
    assert stats["completion_tokens"] == plain.completion_tokens + called.completion_tokens


@pytest.fixture
def test_split() -> list[Task]:
    return load_dataset("perf-lite").tasks("test")


async def test_mock_injects_malformed_calls_and_does_not_count_them_as_steps(
    test_split: list[Task],
) -> None:
    task = test_split[0]
    app = create_mock_llm_app(seed=3, malformed_rate=1.0)
    async with serve_in_loop(app) as mock, HttpPool() as pool:
        model = OpenAIChatModel("m", f"{mock.url}/v1", pool=pool, action_format="tool_call")
        history: list[Message] = [{"role": "user", "content": task.prompt}]
        kinds = set()
        for _ in range(6):
            reply = await model.query(history)
            with pytest.raises(ToolCallError) as bad:
                parse_tool_calls(reply.tool_calls)
            kinds.add("JSON" if "parsing" in str(bad.value) else "tool")
            history.append({"role": "assistant", "content": "", "tool_calls": reply.tool_calls})
        app.state.mock.config.malformed_rate = 0.0
        good = await model.query(history)  # still the first step: the patch
        stats = (await pool.request("GET", f"{mock.url}/stats")).json()
    assert kinds == {"JSON", "tool"}
    assert "git apply" in parse_tool_calls(good.tool_calls)[0].command
    assert stats["malformed_total"] == 6


@pytest.mark.slow
async def test_tool_call_fleet_with_errors_and_malformed_calls_solves_every_task(
    tmp_path: Path, test_split: list[Task]
) -> None:
    """A LightAgent fleet in tool-call mode over the mock LLM: 30% of calls fail (429, 500,
    dropped connection), 10% of replies carry a malformed tool call; every task of the
    test split is solved and the tokens and cost match the mock's accounting."""
    app = create_mock_llm_app(error_rate=0.3, malformed_rate=0.1, seed=11, cost_per_call=0.001)
    async with serve_in_loop(app) as mock:
        retry = RetryPolicy(attempts=10, wait_min=0.01, wait_max=0.05, budget_s=60)
        spec = ModelSpec("openai/mock-oracle", url=f"{mock.url}/v1", options={"retry": retry})
        cfg = FleetConfig(
            model=spec,
            run_dir=tmp_path / "run",
            workers=4,
            agent=AgentConfig(step_limit=15, action_format="tool_call"),
            sandbox_root=tmp_path / "sandboxes",
            eval_repeats=2,
        )
        outcomes = await run_fleet(cfg)
        async with HttpPool() as pool:
            stats = (await pool.request("GET", f"{mock.url}/stats")).json()
    assert len(outcomes) == len(test_split) == 8
    assert stats["errors_total"] > 0 and stats["malformed_total"] > 0
    assert stats["tool_call_replies"] == stats["completions"]
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
