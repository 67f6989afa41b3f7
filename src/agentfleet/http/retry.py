"""Retry rules for :class:`~agentfleet.http.HttpPool` (tenacity based).

Idempotent requests are retried: GET/HEAD/PUT/DELETE/OPTIONS (and TRACE), POST/PATCH
when the caller sends an ``Idempotency-Key`` header or passes ``idempotent=True``.
Retried outcomes: connection errors (refused, reset, server disconnected, connect timeout,
truncated body), the statuses 429/502/503/504, and a success whose body the caller's
check refuses (e.g. not JSON). Any other request is retried only after a connect failure
(:func:`is_connect_error`): the connection was never made, so the server never saw it.
``Retry-After`` (seconds or an HTTP date) replaces the backoff when present, capped by
``wait_max``. Stops after ``attempts`` or before the next attempt would start past
``budget_s``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol

# aiohttp is imported where an exception is classified (it is loaded by then: the exception
# came from it), so that client modules import these rules without the HTTP stack.
if TYPE_CHECKING:  # tenacity is imported by build_retrying(), when a retry happens
    from tenacity import AsyncRetrying, RetryCallState


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    wait_min: float = 4.0
    wait_max: float = 60.0
    budget_s: float = 900.0  # total time across attempts


NO_RETRY = RetryPolicy(attempts=1)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})
IDEMPOTENCY_HEADER = "idempotency-key"


class _HasStatus(Protocol):
    status: int
    headers: Mapping[str, str]


def is_idempotent(
    method: str, headers: Mapping[str, str] | None = None, idempotent: bool | None = None
) -> bool:
    """May this request be sent more than once? An explicit ``idempotent`` wins."""
    if idempotent is not None:
        return idempotent
    if method.upper() in IDEMPOTENT_METHODS:
        return True
    return bool(headers) and any(k.lower() == IDEMPOTENCY_HEADER for k in headers or ())


def is_retryable_exception(exc: BaseException) -> bool:
    """Connection-level failures where resending an idempotent request is safe.

    A read timeout (``SocketTimeoutError``) and the overall ``total`` timeout are not
    retried: the server was slow, not unreachable, and the call's budget is spent.
    """
    import aiohttp

    if isinstance(exc, aiohttp.SocketTimeoutError):
        return False
    return isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError)


def is_connect_error(exc: BaseException) -> bool:
    """The connection was never made (refused, unreachable, connect timeout): the request
    never left, so resending it is safe whatever its method."""
    import aiohttp

    return isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)


TRANSPORT_STATUSES = frozenset({502, 503, 504})  # bad gateway / unreachable / timed out


def is_transport_error(exc: BaseException) -> bool:
    """A failure of the way to a server, not an answer from it: a connection error or a
    timeout (aiohttp's, or an ``HttpError`` after retries), or an error whose ``status``
    is 502/503/504 (e.g. a ``SandboxError`` for an unreachable sandbox server)."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return True
    return getattr(exc, "status", None) in TRANSPORT_STATUSES


def is_retryable_response(resp: object) -> bool:
    return getattr(resp, "status", None) in RETRY_STATUSES


class _HasBody(Protocol):
    status: int

    def json(self) -> Any: ...


BodyCheck = Callable[[Any], bool]
"""Says whether a success's body is what the caller expects (False or ValueError: not)."""


def json_object(resp: _HasBody) -> bool:
    """A :data:`BodyCheck`: the body is a JSON object."""
    try:
        return isinstance(resp.json(), dict)
    except ValueError:  # not JSON, or not UTF-8
        return False


def body_refused(resp: _HasBody, accept: BodyCheck | None) -> bool:
    """A success (< 400) whose body ``accept`` refuses: retried like a 502."""
    if accept is None or resp.status >= 400:
        return False
    try:
        return not accept(resp)
    except ValueError:
        return True


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date); None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def retry_after_from_headers(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI's) or ``Retry-After``; None if absent."""
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    return parse_retry_after(lower.get("retry-after"))


def retry_after_of(resp: object) -> float | None:
    return retry_after_from_headers(getattr(resp, "headers", None))


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: uniform in [wait_min, min(wait_max, wait_min*2^(n-1))]."""
    high = min(policy.wait_max, policy.wait_min * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(policy.wait_min, max(policy.wait_min, high))


class wait_retry_after_or_backoff:
    """tenacity wait: the response's ``Retry-After`` (capped by wait_max), else the backoff."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        if outcome is not None and not outcome.failed:
            ra = retry_after_of(outcome.result())
            if ra is not None:
                return min(ra, self.policy.wait_max)
        return backoff_delay(self.policy, retry_state.attempt_number)


def _last_outcome(retry_state: RetryCallState) -> Any:
    """When retries are exhausted: the last response, or re-raise the last exception."""
    assert retry_state.outcome is not None
    return retry_state.outcome.result()


def build_retrying(
    policy: RetryPolicy,
    on_retry: Callable[[RetryCallState], None] | None = None,
    *,
    retry_exception: Callable[[BaseException], bool] = is_retryable_exception,
    retry_result: Callable[[Any], bool] = is_retryable_response,
) -> AsyncRetrying:
    """An AsyncRetrying for ``policy``; when exhausted it returns the last response
    (status outcomes) or raises the last exception (connection outcomes). The predicates
    say which exceptions and which results are worth another attempt."""
    from tenacity import (
        AsyncRetrying,
        retry_if_exception,
        retry_if_result,
        stop_after_attempt,
        stop_before_delay,
    )

    return AsyncRetrying(
        stop=stop_after_attempt(max(1, policy.attempts)) | stop_before_delay(policy.budget_s),
        wait=wait_retry_after_or_backoff(policy),
        retry=retry_if_exception(retry_exception) | retry_if_result(retry_result),
        before_sleep=on_retry,
        retry_error_callback=_last_outcome,
        reraise=True,
    )
