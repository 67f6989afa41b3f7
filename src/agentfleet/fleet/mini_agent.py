"""``agentfleet run --agent mini``: mini-swe-agent 2.x's ``DefaultAgent`` as the fleet's agent.

Each agent runs in a worker thread (mini-swe-agent is sync) over agentfleet's sandbox
(:class:`~agentfleet.sandbox.env.RemoteDockerEnvironment`) and model
(:class:`~agentfleet.models.mini.MiniModel` around the run's ``--model``); their HTTP calls
go through the process's background loop and its one pool (the run's stop cancels the one in
flight). The runner does the rest as for LightAgent: sandbox, ``git diff``, evaluation,
results, resume, report. The trajectory is mini-swe-agent's own (``agent.serialize()``), with
agentfleet's figures merged into ``info``.

The YAML (``--agent-config``, a path or a mini-swe-agent built-in name; default its
``mini.yaml``) has mini-swe-agent's sections: ``agent`` (DefaultAgent's settings and
templates), ``model`` (MiniModel's: ``action_format``, ``observation_template``,
``format_error_template``...), ``environment`` (``cwd``, ``timeout``, ``env``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agentfleet.agent import AgentConfig
from agentfleet.http.background import background_loop
from agentfleet.models.base import Message, Model
from agentfleet.sandbox.base import Sandboxes
from agentfleet.tasks import Task
from agentfleet.tasks.oneline import not_utf8
from agentfleet.tasks.yamlfile import yaml_problem

DEFAULT_MINI_CONFIG = "mini.yaml"  # mini-swe-agent's built-in default
SECTIONS = ("agent", "model", "environment", "run")
ENV_KEYS = ("cwd", "timeout", "env")
T = TypeVar("T")


def load_mini_config(spec: str | Path | None) -> dict[str, Any]:
    """The mini-swe-agent YAML ``spec`` (a path, or a built-in name such as ``mini.yaml``):
    ValueError with a message when mini-swe-agent is missing or the file is not usable."""
    from yaml import YAMLError

    try:
        from minisweagent.config import get_config_from_spec
    except ImportError as exc:
        raise ValueError(
            "--agent mini needs mini-swe-agent: pip install 'agentfleet[mini]'"
        ) from exc
    try:
        data = get_config_from_spec(str(spec) if spec is not None else DEFAULT_MINI_CONFIG)
    except YAMLError as exc:  # mini-swe-agent's own read: PyYAML's text spans lines
        raise ValueError(f"{spec}: not valid YAML: {yaml_problem(exc)}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{spec}: {not_utf8(exc)}") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"--agent-config: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("agent"), dict):
        raise ValueError(f"{spec}: a mini-swe-agent config needs an 'agent' section")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{spec}: unknown section(s) {', '.join(unknown)} (known: {SECTIONS})")
    for key in ("system_template", "instance_template"):
        if not isinstance(data["agent"].get(key), str):
            raise ValueError(f"{spec}: agent.{key} is missing")
    return data


@dataclass
class MiniResult:
    """What the runner reads of a finished agent (as of LightAgent's ``AgentResult``)."""

    exit_status: str
    messages: list[Message]
    steps: int
    duration_s: float
    error: str = ""
    trajectory: dict[str, Any] = field(default_factory=dict)  # mini-swe-agent's serialize()


def _stricter(run: float | None, yaml: Any) -> Any:
    """The stricter of the run's limit and the YAML's, in mini-swe-agent's convention (0 or
    unset: none)."""
    try:
        theirs = 0.0 if yaml is None else float(yaml)
    except (TypeError, ValueError):
        return yaml  # not a number: DefaultAgent's config refuses it
    if run is not None and run > 0 and not 0 < theirs <= run:
        return run
    return yaml if theirs > 0 else 0


def _agent_settings(config: dict[str, Any], limits: AgentConfig) -> dict[str, Any]:
    """DefaultAgent's settings: the YAML's, each limit the stricter of the YAML's and the
    run's (DefaultAgent's config, saved in the trajectory, holds the limits in force). A
    run's cost limit of 0 is not expressible here: FleetAgent applies it."""
    agent = config["agent"]
    time_limit = math.ceil(limits.time_limit_s)  # mini-swe-agent counts whole seconds
    return {
        **agent,
        "step_limit": _stricter(limits.step_limit, agent.get("step_limit")),
        "wall_time_limit_seconds": _stricter(time_limit, agent.get("wall_time_limit_seconds")),
        "cost_limit": _stricter(limits.cost_limit, agent.get("cost_limit")),
    }


def _ended(exit_status: str, content: str) -> Exception:
    """mini-swe-agent's clean end of the agent (its exit message) with ``exit_status``."""
    from minisweagent.exceptions import LimitsExceeded

    extra = {"exit_status": exit_status, "submission": ""}
    return LimitsExceeded({"role": "exit", "content": content, "extra": extra})


class _Stop:
    """The run's stop, for one agent thread: once set, the agent's call in flight (a model
    query, a command) is cancelled and no other starts; the agent ends with ``status``
    (``Interrupted``, or ``TimeLimitExceeded`` at the run's time limit)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._calls: set[concurrent.futures.Future[Any]] = set()
        self.status = "Interrupted"  # the agent's exit status once stopped

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self, status: str = "Interrupted") -> None:
        with self._lock:
            if not self._event.is_set():
                self.status = status
            self._event.set()
            calls = list(self._calls)
        for call in calls:
            call.cancel()  # and its task on the background loop (no retry after it)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """``coro`` on the process's background loop (as ``run_sync``) unless stopped."""
        with self._lock:
            if self._event.is_set():
                coro.close()
                raise _ended(self.status, self.status)
            call = background_loop().submit(coro)
            self._calls.add(call)
        try:
            return call.result()
        except Exception:
            if self._event.is_set():  # cancelled, or failed as the runner cleaned up
                raise _ended(self.status, self.status) from None
            raise
        finally:
            with self._lock:
                self._calls.discard(call)


def _stoppable(stop: _Stop) -> tuple[type, type]:
    """The environment and model classes whose calls ``stop`` cancels (trajectories name
    the classes they extend)."""
    from agentfleet.models.mini import MiniModel
    from agentfleet.sandbox.env import RemoteDockerEnvironment

    def named(data: dict[str, Any], key: str, cls: type) -> dict[str, Any]:
        data["info"]["config"][key] = f"{cls.__module__}.{cls.__name__}"
        return data

    class FleetEnvironment(RemoteDockerEnvironment):
        def _run_sync(self, coro: Coroutine[Any, Any, T], name: str, async_name: str) -> T:
            return stop.run(coro)

        def serialize(self) -> dict[str, Any]:
            return named(super().serialize(), "environment_type", RemoteDockerEnvironment)

    class FleetModel(MiniModel):
        def _run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
            return stop.run(coro)

        def serialize(self) -> dict[str, Any]:
            return named(super().serialize(), "model_type", MiniModel)

    return FleetEnvironment, FleetModel


def _agent_class(stop: _Stop, cost_limit: float | None) -> type:
    """DefaultAgent that ends (with ``stop.status``) before its next step once ``stop`` is set,
    and ends cleanly at the run's cost limit (``cost_limit``, or the agentfleet model's own
    limits) and at its own time limit with LightAgent's exit statuses."""
    from minisweagent.agents.default import DefaultAgent
    from minisweagent.exceptions import TimeExceeded

    from agentfleet.models.base import LimitReached

    class FleetAgent(DefaultAgent):
        def step(self) -> list[dict]:
            if stop.is_set():
                raise _ended(stop.status, stop.status)
            return super().step()

        def query(self) -> dict:
            if cost_limit is not None and self.cost >= cost_limit:  # before DefaultAgent's
                spent = f"the agent spent ${self.cost:.4f}"
                raise _ended(
                    "CostLimitExceeded", f"{spent}, reaching its cost limit ${cost_limit:.4f}"
                )
            try:
                return super().query()
            except LimitReached as exc:  # raised before the call: not an error, no step
                self.n_calls -= 1
                raise _ended(exc.exit_status, str(exc)) from None
            except TimeExceeded:  # DefaultAgent's own check: LightAgent's exit status
                limit = self.config.wall_time_limit_seconds
                raise _ended("TimeLimitExceeded", f"time limit {limit}s reached") from None

    return FleetAgent


def _run_sync(
    config: dict[str, Any],
    model: Model,
    sandboxes: Sandboxes,
    sandbox_id: str,
    task: Task,
    limits: AgentConfig,
    stop: _Stop,
) -> MiniResult:
    start = time.monotonic()
    env_class, model_class = _stoppable(stop)
    env_cfg = {k: v for k, v in (config.get("environment") or {}).items() if k in ENV_KEYS}
    env = env_class(sandbox_id, sandboxes=sandboxes, **env_cfg)
    model_cfg = {k: v for k, v in (config.get("model") or {}).items() if k != "model_class"}
    mini_model = model_class(model=model, **model_cfg)
    agent_class = _agent_class(stop, limits.cost_limit)
    agent = agent_class(mini_model, env, **_agent_settings(config, limits))
    error = ""
    try:
        info = agent.run(task.prompt, task_id=task.id)
        status = str(info.get("exit_status") or "Error")
    except Exception as exc:  # DefaultAgent logged it as the exit message already
        status, error = type(exc).__name__, f"{type(exc).__name__}: {exc}"
        status = getattr(exc, "exit_status", status)
    return MiniResult(
        status,
        list(agent.messages),
        agent.n_calls,
        time.monotonic() - start,
        error,
        agent.serialize(),
    )


async def run_mini(
    config: dict[str, Any],
    model: Model,
    sandboxes: Sandboxes,
    sandbox_id: str,
    task: Task,
    limits: AgentConfig,
) -> MiniResult:
    """Run mini-swe-agent's DefaultAgent on ``task`` in a worker thread.

    Cancelled (Ctrl-C, SIGTERM), the agent's call in flight (model query or command) is
    cancelled, no other starts, and the thread ends at once (its result is dropped). At the
    run's time limit the same happens, and the agent ends ``TimeLimitExceeded`` as
    LightAgent does (mini-swe-agent's own check comes only between calls)."""
    stop = _Stop()
    timer = asyncio.get_running_loop().call_later(
        limits.time_limit_s, stop.set, "TimeLimitExceeded"
    )
    try:
        return await asyncio.to_thread(
            _run_sync, config, model, sandboxes, sandbox_id, task, limits, stop
        )
    except asyncio.CancelledError:
        stop.set()
        raise
    finally:
        timer.cancel()


def mini_trajectory(result: Any, ours: dict[str, Any]) -> dict[str, Any]:
    """mini-swe-agent's trajectory of ``result`` with agentfleet's ``info`` fields (``ours``:
    exit status, submission, model stats, reward, speedup, evaluation) laid over its
    ``info``; ``ours`` alone for a LightAgent result."""
    mini = getattr(result, "trajectory", None)
    if not mini:
        return ours
    merged = {**mini, "instance_id": ours.get("instance_id")}
    merged["info"] = {**mini.get("info", {}), **ours.get("info", {})}
    return merged
