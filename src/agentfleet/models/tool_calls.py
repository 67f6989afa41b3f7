"""Native tool calls: the one ``bash`` tool (OpenAI ``tools`` format, as mini-swe-agent 2.x
sends it) and the parsing of a reply's ``tool_calls`` into commands."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

ActionFormat = Literal["text", "tool_call"]
ACTION_FORMATS: tuple[str, ...] = ("text", "tool_call")

BASH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "bash",
        "description": "Execute a bash command",
        "parameters": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The bash command to execute"}
            },
            "required": ["command"],
        },
    },
}


@dataclass
class ToolCallAction:
    command: str
    tool_call_id: str


class ToolCallError(ValueError):
    """The reply's tool calls cannot run (none, unknown tool, bad arguments)."""


def check_action_format(value: str) -> ActionFormat:
    if value not in ACTION_FORMATS:
        raise ValueError(f"action_format must be one of {', '.join(ACTION_FORMATS)}, got {value!r}")
    return value  # type: ignore[return-value]


def command_problem(command: str) -> str:
    """Why ``command`` cannot run ("" when it can): empty, or holding a NUL (which no
    sandbox accepts)."""
    if not command.strip():
        return "the command is empty"
    if "\0" in command:
        return "the command contains a NUL character"
    return ""


def parse_tool_calls(tool_calls: list[Any] | None) -> list[ToolCallAction]:
    """The commands of ``tool_calls`` (OpenAI's shape), in order; :class:`ToolCallError`
    naming every problem, with the same checks as mini-swe-agent's."""
    if not tool_calls:
        raise ToolCallError(
            "No tool calls found in the response. "
            "Every response MUST include at least one tool call."
        )
    actions, errors = [], []
    for i, call in enumerate(tool_calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            errors.append(f"tool call {i}: no 'function'.")
            continue
        name, raw = function.get("name"), function.get("arguments")
        args: Any = None
        problem = ""
        try:
            args = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            problem = f"Error parsing tool call arguments: {exc}."
        if name != "bash":
            problem += f" Unknown tool {name!r}."
        elif not problem and (
            not isinstance(args, dict) or not isinstance(args.get("command"), str)
        ):
            problem += " Missing 'command' argument in bash tool call."
        elif not problem and (why := command_problem(args["command"])):
            problem += f" Bad 'command' argument in bash tool call: {why}."
        if problem:
            errors.append(f"tool call {i}: {problem.strip()}")
        else:
            actions.append(ToolCallAction(args["command"], str(call.get("id") or f"call_{i}")))
    if errors:
        raise ToolCallError(" ".join(errors))
    return actions


def is_well_formed(tool_calls: list[Any] | None) -> bool:
    try:
        parse_tool_calls(tool_calls)
    except ToolCallError:
        return False
    return True
