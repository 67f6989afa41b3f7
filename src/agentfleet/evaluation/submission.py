"""What a job server needs around its evaluator: the evaluator protocol, the test-mode
evaluator, the refusals of a submission (with their HTTP status), the body digest an
idempotency key is bound to, and the evaluator's submit-time check."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
from typing import Any, Protocol, runtime_checkable

from agentfleet.evaluation.schema import EvalRequest, EvalResult


@runtime_checkable
class EvaluatorLike(Protocol):
    """Anything that scores one submission. An optional ``check(req)`` method (sync or
    async) validates a request at submit time: raising ``LookupError`` (``TaskNotFound``)
    answers 404, ``ValueError`` or a ``BadSubmission`` answers 422."""

    async def evaluate(self, req: EvalRequest) -> EvalResult: ...


class TestModeEvaluator:
    """Test mode: each evaluation sleeps ``latency`` seconds and scores 1.0 / 1.0."""

    __test__ = False  # not a pytest class

    def __init__(self, latency: float) -> None:
        self.latency = latency

    async def evaluate(self, req: EvalRequest) -> EvalResult:
        await asyncio.sleep(self.latency)
        return EvalResult(
            reward=1.0,
            speedup=1.0,
            info={
                "test_mode": True,
                "instance_id": req.instance_id,
                "dataset_name": req.dataset_name,
                "split": req.split,
                "latency_s": self.latency,
            },
        )


# errors -----------------------------------------------------------------------------
class SubmitError(Exception):
    """A submission refused before it became a job; ``status`` is the HTTP status."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class QueueFull(SubmitError):
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IdempotencyConflict(SubmitError):
    status = 422


# helpers ----------------------------------------------------------------------------
def body_hash(req: EvalRequest) -> str:
    """sha256 of the canonical JSON of the request fields, the idempotency key left out."""
    fields = req.model_dump(mode="json", exclude={"idempotency_key"})
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


async def run_check(evaluator: Any, req: EvalRequest) -> None:
    """Call ``evaluator.check(req)`` when it exists (a sync one runs in a thread)."""
    check = getattr(evaluator, "check", None)
    if check is None or not callable(check):
        return
    if inspect.iscoroutinefunction(check):
        await check(req)
        return
    out = await asyncio.to_thread(check, req)
    if inspect.isawaitable(out):
        await out


__all__ = [
    "EvaluatorLike",
    "IdempotencyConflict",
    "QueueFull",
    "SubmitError",
    "TestModeEvaluator",
    "body_hash",
    "run_check",
]
