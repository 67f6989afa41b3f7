"""LightAgent: the bash-only agent loop. Text mode: one bash block per reply, its output back
as a user message. Tool-call mode: the model calls the ``bash`` tool (one or more calls per
reply, run in order), each answered by a ``tool`` message. A reply that breaks the format
(an empty command too) gets a format error back and the run goes on (as in mini-swe-agent);
a command the sandbox refuses (too long...) gets the refusal as its observation."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import yaml
from jinja2 import Environment, StrictUndefined, Template
from pydantic import ValidationError

from agentfleet.models.base import LimitReached, Message, Model, ModelError, ModelReply
from agentfleet.models.offline import SUBMIT_SENTINEL
from agentfleet.models.tool_calls import (
    ToolCallError,
    check_action_format,
    command_problem,
    parse_tool_calls,
)
from agentfleet.sandbox.base import DEFAULT_EXEC_TIMEOUT, ExecResult, SandboxError
from agentfleet.tasks import Task
from agentfleet.tasks.oneline import one_line
from agentfleet.tasks.yamlfile import read_yaml

_BASH_BLOCK = re.compile(r"```bash\s*\n(.*?)\n```", re.DOTALL)
_jinja = Environment(undefined=StrictUndefined, keep_trailing_newline=True)
DEFAULT_TEMPLATES: dict[str, str] = yaml.safe_load(
    Path(__file__).with_name("templates.yaml").read_text()
)
# A sandbox's answer to a request it refuses for its content (not for the sandbox's state):
# that one command is not run, the agent goes on.
REFUSED_COMMAND_STATUSES = frozenset({400, 413, 422})


@cache
def _compile(source: str) -> Template:
    return _jinja.from_string(source)


class AsyncEnvironment(Protocol):
    """Where the agent's commands run (``RemoteDockerEnvironment``, or any object with this
    method): the typed result, whose ``timed_out`` and ``truncated`` the model is told."""

    async def aexecute(
        self, command: str, cwd: str = "", timeout: float | None = None
    ) -> ExecResult: ...


@dataclass
class AgentConfig:
    step_limit: int = 30
    time_limit_s: float = 900.0
    command_timeout_s: float = DEFAULT_EXEC_TIMEOUT
    observation_max_chars: int = 10_000
    cost_limit: float | None = None  # USD per agent (its model); None: no limit
    run_cost_limit: float | None = None  # USD for the whole run, shared by its agents
    action_format: str | None = None  # "text" | "tool_call"; None: the model's own
    templates: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TEMPLATES))

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, **overrides: Any) -> AgentConfig:
        """Defaults, then the YAML file (sync: read it outside the event loop), then the
        overrides that are not None. Unknown keys or bad values raise ValueError."""
        templates = dict(DEFAULT_TEMPLATES)
        data: dict[str, Any] = {}
        if path is not None:
            loaded = read_yaml(path)  # YamlFileError (a ValueError): one line naming it
            if loaded is None:
                loaded = {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: expected a mapping of settings")
            data = dict(loaded)
            for key in list(data):
                if isinstance(key, str) and key.endswith("_template"):
                    templates[key] = str(data.pop(key))
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(templates=templates, **_checked_settings(data, path))


def _checked_settings(data: dict[str, Any], path: str | Path | None) -> dict[str, Any]:
    """``data`` with known keys only, numbers converted; ValueError naming the bad ones."""
    where = f"{path}: " if path is not None else ""
    types = {f.name: f.type for f in fields(AgentConfig) if f.name != "templates"}
    unknown = sorted(str(k) for k in data if k not in types)
    if unknown:
        known = ", ".join([*types, "*_template"])
        raise ValueError(f"{where}unknown agent setting(s) {', '.join(unknown)} (known: {known})")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "action_format":
            try:
                out[key] = None if value is None else check_action_format(str(value))
            except ValueError as exc:
                raise ValueError(f"{where}{exc}") from None
            continue
        kind = int if types[key] == "int" else float
        if value is None and "None" in str(types[key]):
            out[key] = None
            continue
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}{key} must be a number, got {value!r}") from None
        if number < 0 or isinstance(value, bool):
            raise ValueError(f"{where}{key} must be a non-negative number, got {value!r}")
        out[key] = number
    return out


@dataclass
class AgentResult:
    exit_status: str
    messages: list[Message]
    steps: int
    duration_s: float
    error: str = ""


def parse_action(reply: str) -> list[str]:
    return [block.strip() for block in _BASH_BLOCK.findall(reply)]


_ELIDED = "\n... [{} characters elided] ...\n"


def clip_middle(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters: its head and tail around a note of what
    was cut out (the note counted in), or only its head when the note would not fit."""
    limit = max(limit, 0)
    if len(text) <= limit:
        return text
    room = limit - len(_ELIDED.format(len(text)))  # the note at its widest
    if room < 2:
        return text[:limit]
    head, tail = room - room // 2, room // 2
    return text[:head] + _ELIDED.format(len(text) - room) + text[len(text) - tail :]


def _answerable(calls: list[Any]) -> list[dict[str, Any]]:
    """The calls the history keeps: objects only (an API refuses others), each with the id
    its ``tool`` answer names (``parse_tool_calls``'s)."""
    return [
        {**call, "id": str(call.get("id") or f"call_{i}")}
        for i, call in enumerate(calls)
        if isinstance(call, dict)
    ]


def _refusal(exc: Exception) -> str:
    if isinstance(exc, ValidationError):  # the request the client would have sent
        why = one_line(exc, limit=len(exc.errors()))
    else:
        why = str(exc)
    return f"the sandbox refused it ({why})"


class LightAgent:
    """Runs one task: query the model, run its one bash block, feed back the output."""

    def __init__(self, model: Model, env: AsyncEnvironment, task: Task, config: AgentConfig):
        self.model, self.env, self.task, self.config = model, env, task, config
        self.messages: list[Message] = []
        self.format_errors = 0
        if config.action_format is not None:
            if hasattr(model, "action_format"):
                setattr(model, "action_format", config.action_format)  # noqa: B010
            elif config.action_format != "text":
                raise ValueError(f"model {model.name!r} cannot make tool calls")
        self.tool_calls = getattr(model, "action_format", "text") == "tool_call"

    def _render(self, name: str, **kw: Any) -> str:
        source = self.config.templates.get(name, DEFAULT_TEMPLATES[name])
        return _compile(source).render(**kw)

    def _add(self, role: str, content: str) -> None:
        self.messages.append({"role": role, "content": content})

    async def run(self) -> AgentResult:
        start = time.monotonic()
        self._add(
            "system",
            self._render("system_template", sentinel=SUBMIT_SENTINEL, tool_calls=self.tool_calls),
        )
        self._add("user", self._render("instance_template", task=self.task))
        steps, status, error, note = 0, "", "", ""
        try:
            async with asyncio.timeout(self.config.time_limit_s):
                status = await self._loop()
        except TimeoutError:
            status = "TimeLimitExceeded"
        except LimitReached as exc:  # a clean end, like the step limit: not an error
            status, note = exc.exit_status, str(exc)
        except ModelError as exc:
            status, error = exc.exit_status, str(exc)
            note = error
        steps = sum(1 for m in self.messages if m["role"] == "assistant")
        if note:
            self._add("user", f"[agentfleet] agent ended: {status}: {note}")
        return AgentResult(status, self.messages, steps, time.monotonic() - start, error)

    async def _loop(self) -> str:
        for _ in range(self.config.step_limit):
            reply = await self.model.query(self.messages)
            step = self._tool_step if self.tool_calls else self._text_step
            if await step(reply):
                return "Submitted"
        return "LimitsExceeded"

    async def _text_step(self, reply: ModelReply) -> bool:
        """One bash block: run it; True once the agent submitted."""
        self._add("assistant", reply.content)
        actions = parse_action(reply.content)
        if len(actions) != 1:
            self.format_errors += 1
            self._add("user", self._render("format_error_template", n_blocks=len(actions)))
            return False
        problem = command_problem(actions[0])
        if problem:
            self.format_errors += 1
            self._add("user", self._render("command_error_template", error=problem))
            return False
        observation = await self._run(actions[0])
        if observation is None:
            return True
        self._add("user", observation)
        return False

    async def _tool_step(self, reply: ModelReply) -> bool:
        """Every ``bash`` call of the reply, in order, each answered by a ``tool`` message;
        a malformed reply gets the format error (on each of its calls); True once submitted."""
        calls = reply.tool_calls or []
        kept = _answerable(calls)
        message: Message = {"role": "assistant", "content": reply.content}
        if kept:  # the API refuses an empty list (400 empty_array)
            message["tool_calls"] = kept
        self.messages.append(message)
        try:
            actions = parse_tool_calls(calls)
        except ToolCallError as exc:
            self.format_errors += 1
            error = self._render("tool_format_error_template", error=str(exc))
            for call in kept:  # the API wants every call answered
                self._add_tool(call["id"], error)
            if not kept:
                self._add("user", error)
            return False
        for action in actions:
            observation = await self._run(action.command)
            if observation is None:
                return True
            self._add_tool(action.tool_call_id, observation)
        return False

    def _add_tool(self, tool_call_id: str, content: str) -> None:
        self.messages.append({"role": "tool", "tool_call_id": tool_call_id, "content": content})

    async def _run(self, command: str) -> str | None:
        """Run ``command``; its rendered observation, or None when it is the submission. A
        refusal of this one command (by the client's checks or the server) is the observation."""
        try:
            result = await self.env.aexecute(command, timeout=self.config.command_timeout_s)
        except (ValueError, SandboxError) as exc:
            if isinstance(exc, SandboxError) and exc.status not in REFUSED_COMMAND_STATUSES:
                raise  # the sandbox is gone, busy, unreachable...: not this command's fault
            return self._render("command_error_template", error=_refusal(exc))
        if result.output.lstrip().splitlines()[:1] == [SUBMIT_SENTINEL]:
            return None
        return self._render(
            "observation_template",
            returncode=result.returncode,
            timed_out=result.timed_out,
            truncated=result.truncated,
            output=clip_middle(result.output, self.config.observation_max_chars),
        )
