"""What the servers' OpenAPI schemas say beyond FastAPI's defaults: the ``{"error": ...}``
body of every error, the statuses each route may answer (:func:`errors`), the bearer token
(:func:`document_bearer`), and the non-JSON bodies (Prometheus text, raw file bytes).

Server-side only (FastAPI): nothing on the client's import path loads this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException
from starlette.routing import Match

from agentfleet.http.auth import OPEN_PATHS, UNAUTHORIZED

_REASONS = {
    400: "bad request (a body that is not JSON, a bad path or cwd)",
    401: UNAUTHORIZED,
    403: "not allowed",
    404: "not found",
    409: "conflict with the current state",
    410: "gone",
    413: "request body too large",
    422: "invalid request",
    429: "at a limit: retry after Retry-After seconds",
    503: "shutting down",
}


class ErrorBody(BaseModel):
    """Every error answer: ``error`` says what went wrong; some add fields (``detail``,
    ``type``, ``retry_after``...)."""

    model_config = ConfigDict(extra="allow")

    error: str


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that may answer these error statuses (the JSON error body
    inline, whatever the route's own media type)."""
    return {s: _error_response(s) for s in statuses}


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": _REASONS.get(status, "error"),
        "content": {"application/json": {"schema": ErrorBody.model_json_schema()}},
    }


class OctetStream(Response):
    """Raw bytes (a file's content); as ``response_class`` it documents the media type."""

    media_type = "application/octet-stream"


JSON_OBJECT: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
"""``content`` of a documented answer that is a JSON object."""

BINARY_BODY: dict[str, Any] = {
    "requestBody": {
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    }
}
"""``openapi_extra=`` for a route that reads its raw body (``await request.body()``)."""


def error_headers(request: Request, exc: HTTPException) -> dict[str, str] | None:
    """The headers of an HTTP error's answer: its own, and for a 405 an ``Allow`` that
    names every method of the path (Starlette's names only those of one of its routes)."""
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        methods: set[str] = set()
        for route in request.app.router.routes:
            if route.matches(request.scope)[0] != Match.NONE:
                methods |= set(getattr(route, "methods", None) or ())
        if methods:
            headers["Allow"] = ", ".join(sorted(methods))
    return headers or None


def document_bearer(app: FastAPI, open_paths: Iterable[str] = OPEN_PATHS) -> None:
    """The app's schema says what its bearer-token guard does: every operation outside
    ``open_paths`` needs ``Authorization: Bearer <token>`` and may answer 401."""
    build: Callable[[], dict[str, Any]] = app.openapi
    open_set = frozenset(open_paths)

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        schema = build()  # FastAPI caches it: changed once, in place
        if fresh:
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["bearer"] = {"type": "http", "scheme": "bearer"}
            for path, operations in schema.get("paths", {}).items():
                if path in open_set:
                    continue
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
                    operation.setdefault("responses", {})["401"] = _error_response(401)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = [
    "BINARY_BODY",
    "JSON_OBJECT",
    "ErrorBody",
    "OctetStream",
    "document_bearer",
    "error_headers",
    "errors",
]
