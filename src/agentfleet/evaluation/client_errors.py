"""What the evaluation server's answers mean to its client: the client's errors, and the
bodies and headers it reads."""

from __future__ import annotations

from typing import Any

from agentfleet.http.response import HttpError, Response
from agentfleet.http.retry import retry_after_from_headers

__all__ = [
    "EvalClientError",
    "EvalRejected",
    "EvalTimeout",
    "error_message",
    "failure",
    "has_job_id",
    "json_body",
    "retry_after",
]


class EvalClientError(HttpError):
    """The evaluation could not be obtained (transport failure after retries, a 5xx, a
    timeout). ``status_code`` is the HTTP status when there was one."""

    def __init__(
        self, message: str, *, status_code: int | None = None, payload: Any = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.payload = payload


class EvalRejected(EvalClientError):
    """The server refused the request with a 4xx (unknown instance, invalid body...)."""


class EvalTimeout(EvalClientError):
    """The overall ``timeout`` of the evaluation expired."""


def error_message(resp: Response) -> str:
    try:
        payload = resp.json()
    except ValueError:
        return resp.text()[:500] or f"HTTP {resp.status}"
    if isinstance(payload, dict):
        err = payload.get("error") or payload.get("detail")
        if err is not None:
            return str(err)
    return str(payload)[:500]


def has_job_id(resp: Response) -> bool:
    body = resp.json()
    return isinstance(body, dict) and isinstance(body.get("job_id"), str)


def json_body(resp: Response, what: str) -> dict[str, Any]:
    """The body of a success as a JSON object, else :class:`EvalClientError` (after the
    pool's retries: a proxy's HTML page, a truncated body...)."""
    try:
        data = resp.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise EvalClientError(
            f"{what}: HTTP {resp.status} with a body that is not the expected JSON object: "
            f"{resp.text()[:200]!r}",
            status_code=resp.status,
        )
    return data


def retry_after(resp: Response, default: float = 1.0) -> float:
    wait = retry_after_from_headers(resp.headers)
    return default if wait is None else wait


def failure(resp: Response, what: str) -> EvalClientError:
    """The error for an answer that is not a success: :class:`EvalRejected` for a 4xx."""
    message = error_message(resp)
    payload: Any
    try:
        payload = resp.json()
    except ValueError:
        payload = None
    cls = EvalRejected if 400 <= resp.status < 500 else EvalClientError
    return cls(
        f"{what}: HTTP {resp.status}: {message}" if cls is EvalClientError else message,
        status_code=resp.status,
        payload=payload,
    )
