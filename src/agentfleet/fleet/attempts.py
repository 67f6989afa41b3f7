"""Which task failures the runner retries: transport failures that outlasted the HTTP
pool's own retries (a server unreachable, a connection lost, a body that never parsed), and
a sandbox its server lost (restarted after a crash, its folders reaped).

A retried task starts over with a fresh sandbox and a fresh agent; the evaluation of the
broken attempt, if any, is not reused. Anything else (a refused request, a wrong patch, a
limit reached, a timeout of the whole evaluation) is an answer, not a fault, and is kept.
"""

from __future__ import annotations

from typing import Any

from agentfleet.evaluation.client import EvalClientError, EvalRejected, EvalTimeout
from agentfleet.http.retry import TRANSPORT_STATUSES, is_transport_error
from agentfleet.sandbox.base import SandboxNotFound

DEFAULT_TASK_ATTEMPTS = 2
MODEL_UNAVAILABLE = "ModelUnavailable"  # the model's exit status after its own retries


def is_transport_failure(exc: BaseException) -> bool:
    """An exception of a task that a fresh attempt may not meet."""
    if isinstance(exc, EvalRejected | EvalTimeout):
        return False
    if isinstance(exc, SandboxNotFound):  # the try's own sandbox, lost: its server restarted
        return True
    if isinstance(exc, EvalClientError):
        return exc.status_code is None or exc.status_code in TRANSPORT_STATUSES
    return is_transport_error(exc)  # SandboxError 502/503/504, connection errors


def transient_evaluation(info: dict[str, Any]) -> bool:
    """An evaluation that failed on the server because of a transport failure or a lost
    sandbox (its ``info["transient"]``, set by the evaluation server): the job failed
    (``failed``) or the evaluator could not finish (``error``)."""
    return info.get("status") in ("failed", "error") and info.get("transient") is True


__all__ = [
    "DEFAULT_TASK_ATTEMPTS",
    "MODEL_UNAVAILABLE",
    "is_transport_failure",
    "transient_evaluation",
]
