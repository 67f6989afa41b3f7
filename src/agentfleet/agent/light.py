"""LightAgent: the bash-only agent loop (one bash block per reply, output back as a message)."""

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

from agentfleet.models.base import LimitReached, Message, Model, ModelError
from agentfleet.models.offline import SUBMIT_SENTINEL
from agentfleet.sandbox.base import DEFAULT_EXEC_TIMEOUT, ExecResult
from agentfleet.tasks import Task

_BASH_BLOCK = re.compile(r"```bash\s*\n(.*?)\n```", re.DOTALL)
_jinja = Environment(undefined=StrictUndefined, keep_trailing_newline=True)
DEFAULT_TEMPLATES: dict[str, str] = yaml.safe_load(
    Path(__file__).with_name("templates.yaml").read_text()
)


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
    templates: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TEMPLATES))

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, **overrides: Any) -> AgentConfig:
        """Defaults, then the YAML file (sync: read it outside the event loop), then the
        overrides that are not None. Unknown keys or bad values raise ValueError."""
        templates = dict(DEFAULT_TEMPLATES)
        data: dict[str, Any] = {}
        if path is not None:
            try:
                loaded = yaml.safe_load(Path(path).read_text())
            except yaml.YAMLError as exc:
                raise ValueError(f"{path}: not valid YAML: {exc}") from exc
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


def clip_middle(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    omitted = len(text) - 2 * half
    return f"{text[:half]}\n... [{omitted} characters elided] ...\n{text[-half:]}"


class LightAgent:
    """Runs one task: query the model, run its one bash block, feed back the output."""

    def __init__(self, model: Model, env: AsyncEnvironment, task: Task, config: AgentConfig):
        self.model, self.env, self.task, self.config = model, env, task, config
        self.messages: list[Message] = []

    def _render(self, name: str, **kw: Any) -> str:
        return _compile(self.config.templates[name]).render(**kw)

    def _add(self, role: str, content: str) -> None:
        self.messages.append({"role": role, "content": content})

    async def run(self) -> AgentResult:
        start = time.monotonic()
        self._add("system", self._render("system_template", sentinel=SUBMIT_SENTINEL))
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
            self._add("assistant", reply.content)
            actions = parse_action(reply.content)
            if len(actions) != 1:
                self._add("user", self._render("format_error_template", n_blocks=len(actions)))
                continue
            result = await self.env.aexecute(actions[0], timeout=self.config.command_timeout_s)
            if result.output.lstrip().splitlines()[:1] == [SUBMIT_SENTINEL]:
                return "Submitted"
            self._add(
                "user",
                self._render(
                    "observation_template",
                    returncode=result.returncode,
                    timed_out=result.timed_out,
                    truncated=result.truncated,
                    output=clip_middle(result.output, self.config.observation_max_chars),
                ),
            )
        return "LimitsExceeded"
