"""A buffered :class:`Response` and the errors of a call that failed for good."""

from __future__ import annotations

import json as jsonlib
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "HttpConnectionError",
    "HttpError",
    "HttpStatusError",
    "HttpTimeoutError",
    "Response",
    "wrap_error",
]


@dataclass
class Response:
    status: int
    headers: CIMultiDictProxy[str]  # case-insensitive, like aiohttp's
    body: bytes
    url: str = ""
    attempts: int = 1  # the attempt of the call that got this answer (2+: retried)

    def __post_init__(self) -> None:
        if not isinstance(self.headers, CIMultiDictProxy):
            self.headers = CIMultiDictProxy(CIMultiDict(self.headers))

    @property
    def ok(self) -> bool:
        return self.status < 400

    def json(self) -> Any:
        return jsonlib.loads(self.body)

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def raise_for_status(self) -> Response:
        if not self.ok:
            raise HttpStatusError(self)
        return self


class HttpError(Exception):
    """A request failed for good (after any retries)."""


class HttpConnectionError(HttpError, aiohttp.ClientConnectionError):
    """Could not reach the server / the connection broke (after any retries).

    Also an ``aiohttp.ClientConnectionError`` so existing ``except aiohttp.ClientError``
    handlers keep working; the original exception is ``__cause__``.
    """


class HttpTimeoutError(HttpError, aiohttp.ServerTimeoutError):
    """A timeout fired (connect, sock_read or total). Also a ``TimeoutError``."""


class HttpStatusError(HttpError):
    def __init__(self, response: Response) -> None:
        self.response = response
        self.status = response.status
        detail = response.text()[:500]
        super().__init__(f"HTTP {response.status} from {response.url}: {detail}")


def wrap_error(exc: BaseException, method: str, url: str, attempts: int) -> HttpError:
    """``exc`` (the last attempt's) as the HttpError a caller sees."""
    tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
    what = f"{method} {url} failed {tries}: {type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError):
        return HttpTimeoutError(f"{method} {url} timed out {tries} ({type(exc).__name__})")
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return HttpConnectionError(what)
    return HttpError(what)
