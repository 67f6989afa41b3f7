"""LightAgent on odd inputs from the model: commands no sandbox runs (empty, a NUL, too
long, too big for the server), against real sandboxes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from test_agent import ShellEnv, make_task, small_service
from test_tool_calls import ToolScript, call

from agentfleet.agent import AgentConfig, AgentResult, LightAgent
from agentfleet.agent.light import clip_middle
from agentfleet.http import HttpPool
from agentfleet.models import SUBMIT_SENTINEL, ScriptedModel
from agentfleet.models.offline import bash_reply
from agentfleet.models.openai_chat import OpenAIChatModel
from agentfleet.models.pricing import PriceTable
from agentfleet.sandbox import RemoteDockerEnvironment, SandboxClient
from agentfleet.sandbox.base import SandboxNotFound
from agentfleet.sandbox.server import create_app
from agentfleet.serving import serve_in_loop

SUBMIT = bash_reply("done", f"echo {SUBMIT_SENTINEL}")
TOO_LONG = "echo " + "x" * 1_000_000  # over ExecRequest's 1,000,000 characters


def contents(messages: list[dict[str, str]]) -> str:
    return "\n".join(str(m.get("content")) for m in messages)


async def test_empty_or_nul_block_is_a_format_error_and_a_refusal_an_observation(
    tmp_path: Path,
) -> None:
    model = ScriptedModel(
        [
            "THOUGHT: let me look first.\n\n```bash\n\n```",  # an empty block
            bash_reply("nul", "echo a\0b"),
            bash_reply("long", TOO_LONG),  # the client refuses it: ValueError
            bash_reply("write", "echo hi > f.txt"),
            SUBMIT,
        ]
    )
    async with small_service(tmp_path / "sb") as service:
        async with await RemoteDockerEnvironment.acreate(sandboxes=service) as env:
            agent = LightAgent(model, env, make_task(tmp_path), AgentConfig())
            result = await agent.run()
            wrote = await env.aexecute("cat f.txt")
    assert result.exit_status == "Submitted" and result.error == "", result.error
    assert agent.format_errors == 2 and result.steps == 5
    assert wrote.output == "hi\n"  # the agent went on after each of them
    empty, nul, long = (result.messages[i]["content"] for i in (3, 5, 7))
    assert "not run: the command is empty" in empty
    assert "NUL" in nul
    assert "refused" in long and "at most 1000000 characters" in long and "xxxx" not in long


async def test_command_the_server_refuses_is_an_observation(tmp_path: Path) -> None:
    """Over HTTP: a command the sandbox server refuses (413, body over its limit)."""
    model = ScriptedModel([bash_reply("big", "echo " + "y" * 5000), SUBMIT])
    app = create_app(small_service(tmp_path / "sb"), max_body_bytes=4096)
    async with serve_in_loop(app) as server:
        sandboxes = SandboxClient(server.url)
        async with await RemoteDockerEnvironment.acreate(sandboxes=sandboxes) as env:
            result = await LightAgent(model, env, make_task(tmp_path), AgentConfig()).run()
    assert result.exit_status == "Submitted", result.error
    assert "refused" in result.messages[3]["content"] and "4096" in result.messages[3]["content"]


async def test_a_sandbox_gone_still_ends_the_agent(tmp_path: Path) -> None:
    """Only a refusal of the command is an observation: not a sandbox that is gone."""
    model = ScriptedModel([bash_reply("ls", "ls"), SUBMIT])
    async with small_service(tmp_path / "sb") as service:
        env = await RemoteDockerEnvironment.acreate(sandboxes=service)
        await service.delete(env.sandbox_id)
        with pytest.raises(SandboxNotFound):
            await LightAgent(model, env, make_task(tmp_path), AgentConfig()).run()


async def test_empty_or_nul_tool_call_is_a_format_error(tmp_path: Path) -> None:
    model = ToolScript(
        [
            [call("", "c1")],
            [call("  ", "c2"), call("echo a\0b", "c3")],
            [call(TOO_LONG, "c4")],
            [call(f"echo {SUBMIT_SENTINEL}", "c5")],
        ]
    )
    async with small_service(tmp_path / "sb") as service:
        async with await RemoteDockerEnvironment.acreate(sandboxes=service) as env:
            agent = LightAgent(model, env, make_task(tmp_path), AgentConfig())
            result = await agent.run()
    assert result.exit_status == "Submitted", result.error
    assert agent.format_errors == 2
    answers = {m["tool_call_id"]: m["content"] for m in result.messages if m["role"] == "tool"}
    assert "Tool call error" in answers["c1"] and "the command is empty" in answers["c1"]
    assert "tool call 0" in answers["c2"] and "NUL" in answers["c3"]
    assert "refused" in answers["c4"] and "Tool call error" not in answers["c4"]


# -- tool-call mode: the history sent back must be valid for the API ----------------------


def history_problem(messages: list[dict[str, Any]]) -> str:
    """What OpenAI's API refuses (400) in a conversation's tool calls, as it words it."""
    pending: set[str] = set()
    for i, m in enumerate(messages):
        if m.get("role") != "tool" and pending:
            return f"messages[{i}]: tool_call_ids {sorted(pending)} have no response messages"
        if m.get("role") == "tool":
            if m.get("tool_call_id") not in pending:
                return f"messages[{i}]: tool message not responding to a preceding tool call"
            pending.discard(m["tool_call_id"])
        elif m.get("role") == "assistant" and "tool_calls" in m:
            calls = m["tool_calls"]
            if not isinstance(calls, list) or not calls:
                return f"Invalid 'messages[{i}].tool_calls': empty array (empty_array)"
            for j, c in enumerate(calls):
                if not isinstance(c, dict) or not isinstance(c.get("id"), str):
                    return f"Invalid type for 'messages[{i}].tool_calls[{j}]': expected an object"
                pending.add(c["id"])
    return ""


def strict_chat_app(replies: list[dict[str, Any]], seen: list[dict[str, Any]]) -> FastAPI:
    """A chat completions server that checks the history as OpenAI does, then answers
    ``replies`` in turn (the last one again after them)."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(body: dict[str, Any]) -> JSONResponse:
        seen.append(body)
        problem = history_problem(body["messages"])
        if problem:
            error = {"message": problem, "type": "invalid_request_error"}
            return JSONResponse({"error": error}, status_code=400)
        message = {"role": "assistant", **replies[min(len(seen), len(replies)) - 1]}
        usage = {"prompt_tokens": 1, "completion_tokens": 1}
        return JSONResponse({"choices": [{"message": message}], "usage": usage})

    return app


async def run_tool_agent(tmp_path: Path, replies: list[dict[str, Any]]) -> AgentResult:
    seen: list[dict[str, Any]] = []
    async with serve_in_loop(strict_chat_app(replies, seen)) as server, HttpPool() as pool:
        model = OpenAIChatModel(
            "m", f"{server.url}/v1", pool=pool, action_format="tool_call", prices=PriceTable({})
        )
        result = await LightAgent(
            model, ShellEnv(tmp_path), make_task(tmp_path), AgentConfig(step_limit=5)
        ).run()
    assert result.exit_status == "Submitted", result.error
    assert len(seen) == result.steps  # every request was accepted
    return result


SUBMIT_CALL = {"content": "", "tool_calls": [call(f"echo {SUBMIT_SENTINEL}", "s1")]}


async def test_reply_without_tool_calls_keeps_the_history_valid(tmp_path: Path) -> None:
    replies = [{"content": "Let me think about the slow spot first."}, SUBMIT_CALL]
    result = await run_tool_agent(tmp_path, replies)
    assert "tool_calls" not in result.messages[2]
    assert "No tool calls" in result.messages[3]["content"]


async def test_tool_call_entry_that_is_not_an_object_is_a_format_error(tmp_path: Path) -> None:
    no_id = {"type": "function", "function": {"name": "python", "arguments": "{}"}}
    replies = [
        {"content": "", "tool_calls": ["bash: ls"]},
        {"content": "", "tool_calls": [no_id, 7]},
        SUBMIT_CALL,
    ]
    result = await run_tool_agent(tmp_path, replies)
    assert "tool_calls" not in result.messages[2]
    assert "tool call 0: no 'function'" in result.messages[3]["content"]
    assert [c["id"] for c in result.messages[4]["tool_calls"]] == ["call_0"]
    answer = result.messages[5]
    assert answer["tool_call_id"] == "call_0" and "tool call 1: no 'function'" in answer["content"]


# -- observation_max_chars holds for every value the config accepts -------------------------


@pytest.mark.parametrize("limit", [0, 1, 2, 3, 40, 41, 10_000])
def test_clip_middle_stays_within_the_limit(limit: int) -> None:
    text = "a" * 50_000 + "b" * 50_000
    clipped = clip_middle(text, limit)
    assert len(clipped) <= limit
    if limit >= 100:  # room for the note: the head, the note, the tail
        assert clipped.startswith("aaa") and clipped.endswith("bbb") and "elided" in clipped
    assert clip_middle(text[:limit], limit) == text[:limit]  # short enough: kept whole


@pytest.mark.parametrize("limit", [0, 1, 200])
async def test_observation_max_chars_holds_in_the_agent(tmp_path: Path, limit: int) -> None:
    model = ScriptedModel([bash_reply("big", "seq 100000"), SUBMIT])
    cfg = AgentConfig.from_yaml(None, observation_max_chars=limit)
    result = await LightAgent(model, ShellEnv(tmp_path), make_task(tmp_path), cfg).run()
    observation = result.messages[3]["content"]
    output = observation.split("<output>\n", 1)[1].rsplit("\n</output>", 1)[0]
    assert len(output) <= limit
    if limit == 200:
        assert output.startswith("1\n2\n") and output.endswith("\n100000\n"), output
