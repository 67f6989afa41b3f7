"""A buffered :class:`Response` and the errors that need no HTTP stack to define.

Client-side modules (the evaluation client) import these without loading aiohttp: the
pool, and aiohttp with it, is loaded on the first request.
"""

from __future__ import annotations

import json as jsonlib
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["HttpError", "HttpStatusError", "Response"]


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


class HttpStatusError(HttpError):
    def __init__(self, response: Response) -> None:
        self.response = response
        self.status = response.status
        detail = response.text()[:500]
        super().__init__(f"HTTP {response.status} from {response.url}: {detail}")
