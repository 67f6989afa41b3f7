"""SandboxClient: the ``Sandboxes`` protocol over HTTP, against ``agentfleet serve-sandbox``."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import time
import uuid
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, RootModel

from agentfleet.http.auth import bearer_headers, client_token
from agentfleet.http.pool import DEFAULT_TIMEOUTS, HttpPool, Response, Timeouts, exec_timeouts
from agentfleet.http.retry import BodyCheck, json_object, retry_after_from_headers
from agentfleet.sandbox.base import (
    DEFAULT_EXEC_TIMEOUT,
    TOKEN_ENV,
    CreateSandbox,
    ExecRequest,
    ExecResult,
    PathOutsideSandbox,
    SandboxBusy,
    SandboxError,
    SandboxInfo,
    SandboxNotFound,
    SandboxUnauthorized,
)

_ERROR_TYPES: dict[str, type[SandboxError]] = {
    "SandboxNotFound": SandboxNotFound,
    "PathOutsideSandbox": PathOutsideSandbox,
}

# Creation copies a repository and commits it: give it time under a start storm.
# (connect: the Timeouts default.)
CREATE_TIMEOUTS = Timeouts(total=600, sock_read=600)
FILE_TIMEOUTS = Timeouts(total=600, sock_read=300)


M = TypeVar("M", bound=BaseModel)
_InfoList = RootModel[list[SandboxInfo]]
_JsonObject = RootModel[dict[str, Any]]
CREATE_CONFLICT_WAIT_S = 60.0  # a retried create whose first attempt is still running


def _model_check(cls: type[BaseModel]) -> BodyCheck:
    """A body check for the pool: the body validates as ``cls`` (else retried like a 5xx)."""

    def check(resp: Response) -> bool:
        cls.model_validate_json(resp.body)  # a ValidationError is a ValueError: refused
        return True

    return check


def _parse(resp: Response, cls: type[M]) -> M:
    """The body as ``cls``; a body that is not (after the pool's retries): SandboxError 502."""
    try:
        return cls.model_validate_json(resp.body)
    except ValueError as e:
        raise SandboxError(
            f"sandbox server answered HTTP {resp.status} with a body that is not a "
            f"{cls.__name__}: {resp.text()[:200]!r} ({type(e).__name__})",
            502,
        ) from e


def error_from_response(resp: Response) -> SandboxError:
    """The SandboxError (or subclass) a server error response stands for."""
    message = resp.text()[:2000] or f"HTTP {resp.status}"
    kind = ""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        message = str(body["error"])
        kind = str(body.get("type", ""))
        if "detail" in body:
            message += f": {json.dumps(body['detail'])[:2000]}"
    if resp.status == 401:
        return SandboxUnauthorized(
            f"sandbox server: {message} (give the server's token: SandboxClient(token=...), "
            f"--sandbox-token or {TOKEN_ENV})"
        )
    if resp.status == 429:
        wait = retry_after_from_headers(resp.headers)
        return SandboxBusy(f"sandbox server busy: {message}", 1.0 if wait is None else wait)
    cls = _ERROR_TYPES.get(kind)
    if cls is None:
        return SandboxError(f"sandbox server: {message}", resp.status)
    err = cls(message)
    err.status = resp.status
    return err


class SandboxClient:
    """Talks to a sandbox server at ``base_url``.

    Without a ``pool`` every call uses the running loop's shared :class:`HttpPool`
    (``HttpPool.for_loop()``), so one client works from any loop or thread.
    Connection failures and client-side timeouts raise ``SandboxError`` (503 / 504); a
    missing or wrong token :class:`SandboxUnauthorized` (401); a server at its limits, once
    the pool's retries are spent, :class:`SandboxBusy` (429, with ``retry_after``).
    ``token``: the server's bearer token (default ``$AGENTFLEET_SANDBOX_TOKEN``).
    """

    def __init__(
        self, base_url: str, pool: HttpPool | None = None, *, token: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._pool = pool
        self._auth = bearer_headers(client_token(token, TOKEN_ENV))

    def __repr__(self) -> str:
        return f"SandboxClient({self.base_url!r})"

    @property
    def pool(self) -> HttpPool:
        return self._pool if self._pool is not None else HttpPool.for_loop()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeouts | None = None,
        idempotent: bool = True,
        expect: int | tuple[int, ...] = 200,
        accept: BodyCheck | None = None,
    ) -> Response:
        url = self.base_url + path
        if self._auth:
            headers = {**self._auth, **(headers or {})}
        try:
            resp = await self.pool.request(
                method,
                url,
                json=json,
                data=data,
                params=params,
                headers=headers,
                timeout=timeout or DEFAULT_TIMEOUTS,
                idempotent=idempotent,
                accept=accept,
            )
        except TimeoutError as e:
            raise SandboxError(f"sandbox server timed out: {method} {url}", 504) from e
        except aiohttp.ClientError as e:
            raise SandboxError(f"sandbox server unreachable: {method} {url}: {e}", 503) from e
        if resp.status not in (expect if isinstance(expect, tuple) else (expect,)):
            raise error_from_response(resp)
        return resp

    # Sandboxes protocol ----------------------------------------------------------------
    async def create(self, req: CreateSandbox) -> SandboxInfo:
        """Create a sandbox; fields left unset take the server's defaults (``ttl_s``).

        With a client-chosen ``req.sandbox_id`` (delete it whatever happens) the create is
        retry-safe, so the pool retries it; a retry answered 409 (its first attempt got
        through) returns the sandbox that attempt made, once it exists."""
        retry_safe = req.sandbox_id is not None
        deadline = time.monotonic() + CREATE_CONFLICT_WAIT_S
        retried = False
        while True:
            resp = await self._request(
                "POST",
                "/sandboxes",
                json=req.model_dump(mode="json", exclude_unset=True),
                timeout=CREATE_TIMEOUTS,
                idempotent=retry_safe,
                expect=(201, 409),
                accept=_model_check(SandboxInfo),
            )
            if resp.status == 201:
                return _parse(resp, SandboxInfo)
            retried = retried or resp.attempts > 1
            if not retried or req.sandbox_id is None or time.monotonic() > deadline:
                raise error_from_response(resp)  # the id was taken before this call
            try:
                made = await self.get(req.sandbox_id)
            except SandboxNotFound:  # the first attempt's create is still running (or
                await asyncio.sleep(0.5)  # was cancelled): ask again
                continue
            if made.task_id != req.task_id:  # not ours after all
                raise error_from_response(resp)
            return made

    async def exec(
        self,
        sandbox_id: str,
        command: str,
        *,
        cwd: str = "",
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> ExecResult:
        """Run a command (``timeout`` None: the server's default, which the client's own
        wait assumes is ``DEFAULT_EXEC_TIMEOUT``). Sent with an ``Idempotency-Key`` (new per
        call unless given, the same on every retry), so the pool retries it safely: the
        server runs it once."""
        req = ExecRequest(command=command, cwd=cwd, timeout=timeout, env=env or {})
        expected = timeout if timeout is not None else DEFAULT_EXEC_TIMEOUT
        resp = await self._request(
            "POST",
            f"/sandboxes/{sandbox_id}/exec",
            json=req.model_dump(mode="json"),
            headers={"Idempotency-Key": idempotency_key or uuid.uuid4().hex},
            timeout=exec_timeouts(expected),
            idempotent=True,
            accept=_model_check(ExecResult),
        )
        return _parse(resp, ExecResult)

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        resp = await self._request(
            "GET", f"/sandboxes/{sandbox_id}/files", params={"path": path}, timeout=FILE_TIMEOUTS
        )
        return resp.body

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        await self._request(
            "PUT",
            f"/sandboxes/{sandbox_id}/files",
            params={"path": path},
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=FILE_TIMEOUTS,
            expect=204,
        )

    async def delete(self, sandbox_id: str) -> None:
        await self._request("DELETE", f"/sandboxes/{sandbox_id}", expect=204)

    # extras ----------------------------------------------------------------------------
    async def get(self, sandbox_id: str) -> SandboxInfo:
        resp = await self._request(
            "GET", f"/sandboxes/{sandbox_id}", accept=_model_check(SandboxInfo)
        )
        return _parse(resp, SandboxInfo)

    async def list(self) -> builtins.list[SandboxInfo]:
        resp = await self._request("GET", "/sandboxes", accept=_model_check(_InfoList))
        return _parse(resp, _InfoList).root

    async def delete_runs(self, runs: Collection[str]) -> builtins.list[str]:
        """Delete every sandbox whose ``run`` label is one of ``runs``; their ids. For the
        sandboxes a killed client left (no ``finally`` ran), before their ttl would."""
        ids = [i.sandbox_id for i in await self.list() if i.run in runs]
        for sandbox_id in ids:
            with contextlib.suppress(SandboxNotFound):
                await self.delete(sandbox_id)
        return ids

    async def healthz(self) -> dict[str, Any]:
        resp = await self._request("GET", "/healthz", accept=json_object)
        return _parse(resp, _JsonObject).root

    async def metrics(self) -> str:
        return (await self._request("GET", "/metrics")).text()
