"""What an evaluation job ends with: the evaluator's result made strict JSON, or the
result of a failure (with ``status_code`` for a bad request, ``transient`` for a
transport failure a client may retry)."""

from __future__ import annotations

import math
from typing import Any

from agentfleet.evaluation.schema import EvalResult
from agentfleet.http.retry import is_transport_error


def finite(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return 0.0
    return v if math.isfinite(v) else 0.0


def json_safe(obj: Any) -> Any:
    """Make ``obj`` strict-JSON encodable (no NaN/inf, no odd types)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return str(obj)


def coerce_result(res: Any) -> dict[str, Any]:
    reward: Any
    speedup: Any
    info: Any
    if isinstance(res, EvalResult):
        reward, speedup, info = res.reward, res.speedup, res.info
    elif isinstance(res, tuple) and len(res) == 3:
        reward, speedup, info = res
    elif isinstance(res, dict):
        reward, speedup, info = res.get("reward"), res.get("speedup"), res.get("info")
    else:
        raise TypeError(f"evaluator returned {type(res).__name__}, not an EvalResult")
    return {
        "reward": finite(reward),
        "speedup": finite(speedup),
        "info": json_safe(info) if isinstance(info, dict) else {},
    }


def error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def submit_status_for(exc: Exception) -> int | None:
    """HTTP status for an exception raised by ``evaluator.check`` (None: not a rejection)."""
    if isinstance(exc, LookupError):  # TaskNotFound
        return 404
    if isinstance(exc, ValueError) or type(exc).__name__ in {"BadSubmission", "BadRequest"}:
        return 422
    status = getattr(exc, "status", None)
    if isinstance(status, int) and 400 <= status < 500:
        return status
    return None


def failed_result(exc: BaseException) -> dict[str, Any]:
    info: dict[str, Any] = {"error": error_text(exc), "error_type": type(exc).__name__}
    status = submit_status_for(exc) if isinstance(exc, Exception) else None
    if status is not None:  # the request itself was bad (unknown task, no patch)
        info["status_code"] = status
    if is_transport_error(exc):  # e.g. the sandbox server stayed unreachable: a client
        info["transient"] = True  # may submit the work again (a new key, a new job)
    return {"reward": 0.0, "speedup": 0.0, "info": info}


__all__ = ["coerce_result", "error_text", "failed_result", "submit_status_for"]
