"""agentfleet: run many coding agents at once on performance tasks and score them.

The public API, imported lazily so that ``import agentfleet`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentfleet._lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from agentfleet.agent.light import AgentConfig as AgentConfig, LightAgent as LightAgent
    from agentfleet.evaluation.client import (
        EvalClient as EvalClient,
        EvalClientError as EvalClientError,
        evaluate_info as evaluate_info,
        evaluate_info_sync as evaluate_info_sync,
    )
    from agentfleet.evaluation.evaluator import EvalConfig as EvalConfig, Evaluator as Evaluator
    from agentfleet.evaluation.reward import RewardConfig as RewardConfig
    from agentfleet.evaluation.schema import EvalRequest as EvalRequest, EvalResult as EvalResult
    from agentfleet.fleet.config import FleetConfig as FleetConfig
    from agentfleet.fleet.runner import run_fleet as run_fleet
    from agentfleet.http.limits import PoolLimits as PoolLimits, Timeouts as Timeouts
    from agentfleet.http.pool import HttpPool as HttpPool
    from agentfleet.http.retry import RetryPolicy as RetryPolicy
    from agentfleet.models.base import Model as Model
    from agentfleet.models.offline import OracleModel as OracleModel, ScriptedModel as ScriptedModel
    from agentfleet.models.openai_chat import (
        OpenAIChatModel as OpenAIChatModel,
        OpenRouterModel as OpenRouterModel,
    )
    from agentfleet.sandbox.client import SandboxClient as SandboxClient
    from agentfleet.sandbox.env import RemoteDockerEnvironment as RemoteDockerEnvironment
    from agentfleet.tasks.task import Task as Task, load_dataset as load_dataset

_EXPORTS: dict[str, str] = {
    "evaluate_info": "agentfleet.evaluation.client",
    "evaluate_info_sync": "agentfleet.evaluation.client",
    "EvalClient": "agentfleet.evaluation.client",
    "EvalClientError": "agentfleet.evaluation.client",
    "EvalRequest": "agentfleet.evaluation.schema",
    "EvalResult": "agentfleet.evaluation.schema",
    "Evaluator": "agentfleet.evaluation.evaluator",
    "EvalConfig": "agentfleet.evaluation.evaluator",
    "RewardConfig": "agentfleet.evaluation.reward",
    "HttpPool": "agentfleet.http.pool",
    "PoolLimits": "agentfleet.http.limits",
    "RetryPolicy": "agentfleet.http.retry",
    "Timeouts": "agentfleet.http.limits",
    "SandboxClient": "agentfleet.sandbox.client",
    "RemoteDockerEnvironment": "agentfleet.sandbox.env",
    "LightAgent": "agentfleet.agent.light",
    "AgentConfig": "agentfleet.agent.light",
    "Model": "agentfleet.models.base",
    "OracleModel": "agentfleet.models.offline",
    "ScriptedModel": "agentfleet.models.offline",
    "OpenAIChatModel": "agentfleet.models.openai_chat",
    "OpenRouterModel": "agentfleet.models.openai_chat",
    "Task": "agentfleet.tasks.task",
    "load_dataset": "agentfleet.tasks.task",
    "FleetConfig": "agentfleet.fleet.config",
    "run_fleet": "agentfleet.fleet.runner",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
