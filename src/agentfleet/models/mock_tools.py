"""The mock LLM's tool-call mode: an oracle reply (THOUGHT text + one bash block) as an
OpenAI ``tool_calls`` reply, and malformed tool calls injected on purpose."""

from __future__ import annotations

import json
import random
import re
import uuid
from typing import Any

from agentfleet.models.tool_calls import is_well_formed

MALFORMED_KINDS: tuple[str, ...] = ("bad_json", "unknown_tool")
_BLOCK = re.compile(r"```bash\s*\n(.*?)\n```", re.DOTALL)


def wants_tool_calls(body: dict[str, Any]) -> bool:
    """The request offers a ``bash`` function tool."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return False
    return any(
        isinstance(t, dict)
        and isinstance(t.get("function"), dict)
        and t["function"].get("name") == "bash"
        for t in tools
    )


def is_malformed_reply(message: dict[str, Any]) -> bool:
    """An assistant message whose tool calls could not run (the step did not happen)."""
    calls = message.get("tool_calls")
    return bool(calls) and not is_well_formed(calls)


def _call(name: str, arguments: str) -> dict[str, Any]:
    ident = f"call_{uuid.uuid4().hex[:12]}"
    return {"id": ident, "type": "function", "function": {"name": name, "arguments": arguments}}


def as_tool_calls(reply: str) -> tuple[str, list[dict[str, Any]]]:
    """(the text before the bash block, one ``bash`` call per block) of an oracle reply."""
    commands = _BLOCK.findall(reply)
    thought = _BLOCK.split(reply, maxsplit=1)[0].strip() if commands else reply.strip()
    return thought, [_call("bash", json.dumps({"command": c})) for c in commands]


def malformed_tool_calls(reply: str, rng: random.Random) -> tuple[str, str, list[dict[str, Any]]]:
    """(kind, text, tool calls) that break the format: arguments that are not JSON, or a
    tool that does not exist."""
    thought, calls = as_tool_calls(reply)
    command = json.loads(calls[0]["function"]["arguments"])["command"] if calls else "ls"
    kind = rng.choice(MALFORMED_KINDS)
    if kind == "bad_json":
        bad = _call("bash", json.dumps({"command": command})[:-1])  # the closing brace lost
    else:
        bad = _call("python", json.dumps({"code": command}))
    return kind, thought, [bad]


def completion_text(content: str, tool_calls: list[dict[str, Any]] | None) -> str:
    """What the completion's token count covers: the text and every call's arguments."""
    parts = [content]
    for call in tool_calls or []:
        parts.append(str(call.get("function", {}).get("arguments", "")))
    return " ".join(parts)
