"""Evaluation: the client (``evaluate_info``, :class:`EvalClient`), the server
(:func:`create_app`, :func:`run_server`) and the evaluator (:class:`Evaluator`).

Names are imported on first use (PEP 562): ``from agentfleet.evaluation import
evaluate_info`` loads the client only, never the server, its job store or the evaluator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentfleet._lazy import lazy_exports

_CLIENT = "agentfleet.evaluation.client"
if TYPE_CHECKING:
    from agentfleet.evaluation.client import (
        EvalClient as EvalClient,
        EvalClientError as EvalClientError,
        EvalRejected as EvalRejected,
        EvalTimeout as EvalTimeout,
        evaluate_info as evaluate_info,
        evaluate_info_sync as evaluate_info_sync,
    )
    from agentfleet.evaluation.evaluator import EvalConfig as EvalConfig, Evaluator as Evaluator
    from agentfleet.evaluation.jobs import (
        EvaluatorLike as EvaluatorLike,
        TestModeEvaluator as TestModeEvaluator,
    )
    from agentfleet.evaluation.schema import EvalRequest as EvalRequest, EvalResult as EvalResult
    from agentfleet.evaluation.server import create_app as create_app, run_server as run_server

_EXPORTS: dict[str, str] = {
    "EvalClient": _CLIENT,
    "EvalClientError": _CLIENT,
    "EvalRejected": _CLIENT,
    "EvalTimeout": _CLIENT,
    "evaluate_info": _CLIENT,
    "evaluate_info_sync": _CLIENT,
    "EvalRequest": "agentfleet.evaluation.schema",
    "EvalResult": "agentfleet.evaluation.schema",
    "EvaluatorLike": "agentfleet.evaluation.jobs",
    "TestModeEvaluator": "agentfleet.evaluation.jobs",
    "create_app": "agentfleet.evaluation.server",
    "run_server": "agentfleet.evaluation.server",
    "EvalConfig": "agentfleet.evaluation.evaluator",
    "Evaluator": "agentfleet.evaluation.evaluator",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
