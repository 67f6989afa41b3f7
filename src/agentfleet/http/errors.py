"""The errors of a call that failed for good (and :class:`Response`, from ``response``)."""

from __future__ import annotations

import aiohttp

from agentfleet.http.response import HttpError, HttpStatusError, Response

__all__ = [
    "HttpConnectionError",
    "HttpError",
    "HttpStatusError",
    "HttpTimeoutError",
    "Response",
    "wrap_error",
]


class HttpConnectionError(HttpError, aiohttp.ClientConnectionError):
    """Could not reach the server / the connection broke (after any retries).

    Also an ``aiohttp.ClientConnectionError`` so existing ``except aiohttp.ClientError``
    handlers keep working; the original exception is ``__cause__``.
    """


class HttpTimeoutError(HttpError, aiohttp.ServerTimeoutError):
    """A timeout fired (connect, sock_read or total). Also a ``TimeoutError``."""


def wrap_error(exc: BaseException, method: str, url: str, attempts: int) -> HttpError:
    """``exc`` (the last attempt's) as the HttpError a caller sees."""
    tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
    what = f"{method} {url} failed {tries}: {type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError):
        return HttpTimeoutError(f"{method} {url} timed out {tries} ({type(exc).__name__})")
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return HttpConnectionError(what)
    return HttpError(what)
