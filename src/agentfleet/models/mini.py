"""agentfleet's models as a mini-swe-agent 2.x ``Model`` (needs ``agentfleet[mini]``).

:class:`MiniModel` wraps any agentfleet model (``OpenAIChatModel``, ``OpenRouterModel``,
or a fleet's model built from ``--model``) behind mini-swe-agent's contract: ``query``
returns the assistant message with ``extra.actions`` (parsed with mini-swe-agent's own
helpers, ``FormatError`` on a malformed reply), ``format_message``,
``format_observation_messages``, ``get_template_vars`` and ``serialize``. The async query
runs on the process's background loop (:mod:`agentfleet.http.background`), so every agent
thread shares one HTTP pool.

From a mini-swe-agent YAML::

    model:
      model_class: agentfleet.models.mini.MiniModel
      model_name: openai/gpt-4.1-mini      # or openrouter/NAME
      base_url: https://api.openai.com/v1  # openai/...: required
      action_format: tool_call             # or text (a ```mswea_bash_command block)
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

from jinja2 import StrictUndefined, Template
from jinja2.exceptions import TemplateError as JinjaError
from minisweagent.exceptions import FormatError
from minisweagent.models import GLOBAL_MODEL_STATS
from minisweagent.models.utils.actions_text import (
    format_observation_messages,
    parse_regex_actions,
)
from minisweagent.models.utils.actions_toolcall import (
    format_toolcall_observation_messages,
    parse_toolcall_actions,
)
from pydantic import BaseModel

from agentfleet.http.background import run_sync
from agentfleet.models.base import Message, Model
from agentfleet.models.tool_calls import command_problem

API_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")  # sent to the API
LITELLM_ONLY = ("drop_params",)  # mini-swe-agent's YAMLs set these for litellm
T = TypeVar("T")


class MiniModelConfig(BaseModel):
    model_name: str = "agentfleet"
    base_url: str | None = None
    api_key_env: str | None = None
    action_format: Literal["tool_call", "text"] = "tool_call"
    model_kwargs: dict[str, Any] = {}
    action_regex: str = r"```mswea_bash_command\s*\n(.*?)\n```"
    format_error_template: str = "{{ error }}"
    observation_template: str = (
        "{% if output.exception_info %}<exception>{{output.exception_info}}</exception>\n"
        "{% endif %}<returncode>{{output.returncode}}</returncode>\n<output>\n"
        "{{output.output}}</output>"
    )


class _Call:
    """A tool call as mini-swe-agent's parser reads it (attributes, not keys)."""

    def __init__(self, raw: dict[str, Any]) -> None:
        function = raw.get("function") or {}
        self.id = raw.get("id")
        self.function = type("Function", (), {})()
        self.function.name = function.get("name")
        self.function.arguments = function.get("arguments")


class MiniModel:
    """A mini-swe-agent ``Model`` over an agentfleet model (``model``), or over one built
    from the config (``model_name`` ``openai/NAME`` with ``base_url``, or
    ``openrouter/NAME``)."""

    def __init__(self, *, model: Model | None = None, **kwargs: Any) -> None:
        self.config = MiniModelConfig(**kwargs)
        self.model = model if model is not None else self._build()
        if hasattr(self.model, "action_format"):
            setattr(self.model, "action_format", self.config.action_format)  # noqa: B010
        elif self.config.action_format == "tool_call":
            raise ValueError(
                f"model {self.model.name!r} answers in text only: set action_format: text"
            )

    def _build(self) -> Model:
        from agentfleet.models.openai_chat import OpenAIChatModel, OpenRouterModel

        c = self.config
        provider, _, name = c.model_name.partition("/")
        sampling = {k: v for k, v in c.model_kwargs.items() if k not in LITELLM_ONLY}
        kw: dict[str, Any] = {"sampling": sampling}
        if c.api_key_env:
            kw["api_key_env"] = c.api_key_env
        if provider == "openrouter" and name:
            return OpenRouterModel(name, c.base_url, **kw)
        if provider == "openai" and name and c.base_url:
            return OpenAIChatModel(name, c.base_url, **kw)
        raise ValueError(
            f"model_name {c.model_name!r}: expected openrouter/NAME, or openai/NAME with base_url"
        )

    # mini-swe-agent's Model protocol ------------------------------------------------------
    def query(self, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        prepared: list[Message] = [
            {k: v for k, v in m.items() if k in API_KEYS} for m in messages if m.get("role")
        ]
        reply = self._run_sync(self.model.query(prepared))
        GLOBAL_MODEL_STATS.add(reply.cost)
        usage = {
            "cost": reply.cost,
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
        }
        try:
            actions = self._parse(reply.content, reply.tool_calls)
        except FormatError as exc:
            exc.messages[0]["extra"].update(usage)  # billed: DefaultAgent adds the cost
            raise
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if self.config.action_format == "tool_call":
            message["tool_calls"] = reply.tool_calls or []
        message["extra"] = {"actions": actions, **usage, "timestamp": time.time()}
        return message

    def _run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """``coro`` run on the process's background loop (``--agent mini``'s subclass also
        stops it when the run stops)."""
        return run_sync(coro, what="MiniModel.query()")

    def _parse(self, content: str, tool_calls: list[dict[str, Any]] | None) -> list[dict]:
        c = self.config
        if c.action_format == "text":
            actions = parse_regex_actions(
                content, action_regex=c.action_regex, format_error_template=c.format_error_template
            )
        else:
            calls = [_Call(t) for t in tool_calls or [] if isinstance(t, dict)]
            if tool_calls and len(calls) != len(tool_calls):
                calls.append(_Call({}))  # an entry that is not an object: a format error too
            actions = parse_toolcall_actions(calls, format_error_template=c.format_error_template)
        for action in actions:  # no sandbox runs these: the model is told, as for a format
            if problem := command_problem(str(action.get("command", ""))):
                raise self._format_error(content, actions, f"{problem[0].upper()}{problem[1:]}.")
        return actions

    def _format_error(self, content: str, actions: list[dict], error: str) -> FormatError:
        """mini-swe-agent's FormatError for ``error``, in its format error template."""
        commands = [str(a.get("command", "")) for a in actions]
        try:
            text = Template(self.config.format_error_template, undefined=StrictUndefined).render(
                actions=commands, error=error
            )
        except JinjaError:  # a template that wants more than these two
            text = f"Format error: {error}"
        extra = {"interrupt_type": "FormatError", "n_actions": len(actions)}
        return FormatError(
            {"role": "user", "content": text, "extra": {**extra, "model_response": content}}
        )

    def format_message(self, **kwargs: Any) -> dict[str, Any]:
        return dict(kwargs)

    def format_observation_messages(
        self, message: dict, outputs: list[dict], template_vars: dict | None = None
    ) -> list[dict]:
        if self.config.action_format == "text":
            return format_observation_messages(
                outputs,
                observation_template=self.config.observation_template,
                template_vars=template_vars,
            )
        return format_toolcall_observation_messages(
            actions=message.get("extra", {}).get("actions", []),
            outputs=outputs,
            observation_template=self.config.observation_template,
            template_vars=template_vars,
        )

    def get_template_vars(self, **kwargs: Any) -> dict[str, Any]:
        return {**self.config.model_dump(), **kwargs}

    def serialize(self) -> dict[str, Any]:
        cls = type(self)
        return {
            "info": {
                "config": {
                    "model": self.config.model_dump(mode="json"),
                    "model_type": f"{cls.__module__}.{cls.__name__}",
                    "agentfleet_model": getattr(self.model, "name", ""),
                },
            }
        }
