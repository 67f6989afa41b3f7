"""Bearer tokens for agentfleet's servers, and the clients' side of them.

One model for the evaluation server and the sandbox server: with a token set, every request
but those to ``open_paths`` (``/healthz``) needs ``Authorization: Bearer <token>``, compared
in constant time, else 401; a server bound beyond loopback refuses to start without a token
(:func:`server_token`). :class:`BearerAuth` is plain ASGI, so it wraps the whole app, routes
added later and any fast path inside it included. Stdlib only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz"})
UNAUTHORIZED = "missing or wrong bearer token"


def is_loopback(host: str) -> bool:
    """Is ``host`` (a bind address) reachable from this machine only?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_token(
    token: str | None, env_var: str, host: str, *, flag: str = "--token"
) -> str | None:
    """The token a server requires: ``token``, else ``$env_var``, else None (empty strings
    count as none). ``ValueError`` if ``host`` is not loopback and there is no token."""
    token = token or os.environ.get(env_var) or None
    if token is None and not is_loopback(host):
        raise ValueError(
            f"refusing to serve on non-loopback host {host!r} without a token "
            f"(pass {flag} or set {env_var})"
        )
    return token


def client_token(token: str | None, env_var: str) -> str | None:
    """The token a client sends: ``token`` if given (even empty: none), else ``$env_var``."""
    if token is not None:
        return token or None
    return os.environ.get(env_var) or None


def bearer_headers(token: str | None) -> dict[str, str]:
    """``{"Authorization": "Bearer <token>"}``, or no header without a token."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def authorized(scope: Scope, token: str) -> bool:
    """Does the request carry ``Authorization: Bearer <token>``? Constant time in the token
    (both sides hashed first, so neither its length nor a prefix leaks)."""
    given = b""
    for name, value in scope.get("headers") or ():
        if name.lower() == b"authorization":
            given = value
            break
    scheme, _, credential = given.partition(b" ")
    ok_scheme = scheme.lower() == b"bearer"
    ok_token = hmac.compare_digest(_digest(credential.strip()), _digest(token.encode()))
    return ok_scheme and ok_token


async def send_json(
    send: Send, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    """A whole JSON response on a raw ASGI ``send``."""
    body = json.dumps(payload).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def refuse(scope: Scope, send: Send) -> None:
    """401 with ``WWW-Authenticate: Bearer`` (an HTTP request), or close a websocket."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send_json(send, 401, {"error": UNAUTHORIZED}, {"www-authenticate": "Bearer"})


class BearerAuth:
    """ASGI middleware: with a ``token``, 401 for any request (HTTP or websocket) to a path
    outside ``open_paths`` without ``Authorization: Bearer <token>``; no token: open."""

    def __init__(
        self, app: ASGIApp, *, token: str | None, open_paths: Iterable[str] = OPEN_PATHS
    ) -> None:
        self.app = app
        self.token = token or None
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.token is not None
            and scope["type"] in ("http", "websocket")
            and scope.get("path") not in self.open_paths
            and not authorized(scope, self.token)
        ):
            await refuse(scope, send)
            return
        await self.app(scope, receive, send)


__all__ = [
    "OPEN_PATHS",
    "BearerAuth",
    "authorized",
    "bearer_headers",
    "client_token",
    "is_loopback",
    "refuse",
    "send_json",
    "server_token",
]
