"""An ASGI guard for a server that takes request bodies: body size limit (413), bearer
token (401, :mod:`agentfleet.http.auth`), and a hook that sees each request's client
(host, port). Streamed and chunked bodies are counted as they arrive. Stdlib only."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from agentfleet.http.auth import (
    OPEN_PATHS,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    authorized,
    refuse,
    send_json,
)


class GuardMiddleware:
    """Outermost ASGI layer: request body limit (413), bearer token (401), and
    distinct client (host, port) pairs for ``/stats``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        max_body: int,
        on_client: Callable[[tuple[str, int] | None], None] | None = None,
        open_paths: Iterable[str] = OPEN_PATHS,
    ) -> None:
        self.app = app
        self.open_paths = frozenset(open_paths)
        self.token = token
        self.max_body = max_body
        self.on_client = on_client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.on_client is not None:
            client = scope.get("client")
            self.on_client((str(client[0]), int(client[1])) if client else None)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.token is not None and scope.get("path") not in self.open_paths:
            if not authorized(scope, self.token):
                await refuse(scope, send)
                return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await send_json(send, 400, {"error": "invalid Content-Length header"})
                return
            if declared > self.max_body:
                await self._refuse_large(receive, send)
                return
        if scope.get("method") in ("GET", "HEAD", "DELETE", "OPTIONS") and length is None:
            await self.app(scope, receive, send)
            return
        # Buffer the body, counting streamed bytes (chunked uploads have no length).
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body:
                if message.get("more_body", False):
                    await self._refuse_large(receive, send)
                else:
                    await send_json(send, 413, _too_large(self.max_body))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse_large(self, receive: Receive, send: Send) -> None:
        """Answer 413 after discarding the body (up to a cap), so the client, still
        uploading, reads the answer instead of a reset connection."""
        cap = max(4 * self.max_body, 64 * 1024 * 1024)
        drained = 0
        while drained <= cap:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await send_json(send, 413, _too_large(self.max_body))


def _too_large(limit: int) -> dict[str, Any]:
    return {"error": f"request body larger than {limit} bytes", "limit": limit}


__all__ = ["GuardMiddleware"]
