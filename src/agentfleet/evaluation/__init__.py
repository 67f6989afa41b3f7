"""Evaluation: the client (``evaluate_info``, :class:`EvalClient`), the server
(:func:`create_app`, :func:`run_server`) and the evaluator (:class:`Evaluator`)."""

from agentfleet.evaluation.client import (
    EvalClient,
    EvalClientError,
    EvalRejected,
    EvalTimeout,
    evaluate_info,
    evaluate_info_sync,
)
from agentfleet.evaluation.jobs import EvaluatorLike, TestModeEvaluator
from agentfleet.evaluation.schema import EvalRequest, EvalResult
from agentfleet.evaluation.server import create_app, run_server

__all__ = [
    "EvalClient",
    "EvalClientError",
    "EvalConfig",
    "EvalRejected",
    "EvalRequest",
    "EvalResult",
    "EvalTimeout",
    "Evaluator",
    "EvaluatorLike",
    "TestModeEvaluator",
    "create_app",
    "evaluate_info",
    "evaluate_info_sync",
    "run_server",
]

try:
    from agentfleet.evaluation.evaluator import EvalConfig, Evaluator
except ImportError:  # pragma: no cover - the evaluator module is optional at import time
    __all__ = [n for n in __all__ if n not in ("EvalConfig", "Evaluator")]
