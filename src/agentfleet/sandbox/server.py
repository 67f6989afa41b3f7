"""The sandbox server: a FastAPI app over a SandboxService (``agentfleet serve-sandbox``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentfleet.http.auth import BearerAuth, server_token
from agentfleet.http.openapi import (
    BINARY_BODY,
    OctetStream,
    document_bearer,
    error_headers,
    errors,
)
from agentfleet.sandbox.base import (
    DEFAULT_STOP_GRACE_S,
    TOKEN_ENV,
    Backend,
    CreateSandbox,
    ExecRequest,
    ExecResult,
    SandboxBusy,
    SandboxError,
    SandboxInfo,
)
from agentfleet.sandbox.limits import limits_report
from agentfleet.sandbox.service import SandboxService

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 60 * 1024 * 1024
DEFAULT_PORT = 9527
IDEMPOTENCY_HEADER = "idempotency-key"
_KEY_RE = re.compile(r"[\x21-\x7e]{1,200}")
T = TypeVar("T")
_ANSWER_S = 5.0  # then uvicorn's time for their 503s to go out

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the {limit} bytes limit")


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: by Content-Length up front, else while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers") or []:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    response = JSONResponse(
                        {"error": f"request body over the {self.max_bytes} bytes limit"}, 413
                    )
                    await response(scope, receive, send)
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


class _ServiceCollector(Collector):
    def __init__(self, service: SandboxService) -> None:
        self.service = service

    def collect(self) -> Iterable[Metric]:
        s = self.service.stats
        backend = self.service.backend_name
        g = GaugeMetricFamily("agentfleet_sandboxes_active", "Sandboxes alive", labels=["backend"])
        g.add_metric([backend], len(self.service))
        yield g
        g = GaugeMetricFamily("agentfleet_sandbox_execs_running", "Commands running now")
        g.add_metric([], self.service.execs_running)
        yield g
        for name, doc, value in (
            ("sandboxes_created", "Sandboxes created", s.created_total),
            ("sandboxes_deleted", "Sandboxes deleted (incl. reaped)", s.deleted_total),
            ("sandboxes_reaped", "Sandboxes deleted at ttl expiry", s.reaped_total),
            ("sandbox_create_failures", "Sandbox creations that failed", s.create_failures),
            ("sandbox_rejected", "Creations refused (max_sandboxes)", s.rejected_total),
            ("sandbox_execs", "Commands run", s.execs_total),
            ("sandbox_exec_timeouts", "Commands killed at their timeout", s.exec_timeouts),
            ("sandbox_exec_truncations", "Commands whose output was cut", s.exec_truncations),
            ("sandbox_exec_rejected", "Commands refused (max_execs*)", s.execs_rejected),
        ):
            c = CounterMetricFamily(f"agentfleet_{name}", doc)
            c.add_metric([], value)
            yield c


async def _client_gone(request: Request) -> None:
    """Return once the client has disconnected (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class StopGrace:
    """The server's stop: once :meth:`begin` is called (SIGINT / SIGTERM), running commands
    have until ``grace_s`` after it to finish; then each still running is cut off, its
    request answering a JSON 503 (the command is killed as the server stops)."""

    def __init__(self, grace_s: float = DEFAULT_STOP_GRACE_S) -> None:
        self.grace_s = grace_s
        self._deadline: float | None = None
        self._begun = asyncio.Event()

    def begin(self) -> None:
        if self._deadline is None:  # a second signal does not move the deadline
            self._deadline = time.monotonic() + self.grace_s
        self._begun.set()

    async def over(self) -> None:
        """Return at the deadline (a request that starts after :meth:`begin` gets what is
        left of the grace, not a grace of its own)."""
        await self._begun.wait()
        assert self._deadline is not None
        await asyncio.sleep(max(0.0, self._deadline - time.monotonic()))


async def _unless_disconnected(
    request: Request, work: Awaitable[T], what: str, stop: StopGrace | None = None
) -> T:
    """Await ``work``, cancelled if the client disconnects first (uvicorn does not cancel
    a handler whose client went away), or once ``stop``'s grace is over (a 503)."""
    run = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_client_gone(request))
    ended = asyncio.ensure_future(stop.over()) if stop is not None else None
    client_gone = stopped = False
    try:
        watched = {run, gone} if ended is None else {run, gone, ended}
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        client_gone = gone.done()
        stopped = ended is not None and ended.done() and ended.exception() is None
    finally:
        gone.cancel()
        if ended is not None:
            ended.cancel()
        if not run.done():
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run
    if run.cancelled():
        if stopped and stop is not None and not client_gone:  # the server's stop
            raise SandboxError(
                f"sandbox server stopping: {what} after {stop.grace_s:g}s of grace", 503
            )
        raise SandboxError(f"client disconnected; {what}", 499)
    return run.result()


def _describe(limits: dict[str, dict[str, Any]]) -> str:
    """``memory_mb=2048 (cgroup v1 (per sandbox)), ...`` for the start-up log."""

    def how(v: dict[str, Any]) -> str:
        return str(v["enforced_by"] or ("no limit" if v["value"] is None else "NOT enforced"))

    return ", ".join(f"{name}={v['value']} ({how(v)})" for name, v in limits.items())


def _error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = _json_safe({"error": message, **extra})  # e.g. a 422 quoting NaN or a surrogate
    return JSONResponse(body, status_code=status, headers=headers)


def _json_safe(value: Any) -> Any:
    """``value`` as strict JSON can carry it: a non-finite float (NaN, 1e309) or a string
    with a lone surrogate becomes its ``repr`` text, so an error detail that quotes the
    refused input still renders."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return repr(value)
        return value
    if isinstance(value, dict):
        return {_json_safe(str(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def create_app(
    service: SandboxService | Backend | None = None,
    *,
    root: Path | str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    token: str | None = None,
    stop_grace_s: float = DEFAULT_STOP_GRACE_S,
    **service_kwargs: Any,
) -> FastAPI:
    """The sandbox HTTP API.

    With a ``token``, every request but ``GET /healthz`` needs ``Authorization: Bearer
    <token>`` (401 otherwise): the outermost ASGI layer, so no route can do without it.

    ``service`` may be a ready :class:`SandboxService`, a bare backend (wrapped in a service
    built with ``service_kwargs``), or ``None`` for a :class:`ProcessBackend` under ``root``.
    The app's lifespan starts the service (backend check, orphan reaping, ttl reaper) and
    deletes every sandbox at shutdown. Once the server starts to stop (``app.state.drain``),
    running commands get ``stop_grace_s`` to finish; then they are killed and answer 503.
    """
    if service is None:
        from agentfleet.sandbox.process import ProcessBackend

        service = ProcessBackend(root)
    if isinstance(service, SandboxService):
        svc = service
    else:
        svc = SandboxService(service, **service_kwargs)

    registry = CollectorRegistry()
    registry.register(_ServiceCollector(svc))
    ProcessCollector(registry=registry)  # process_cpu_seconds_total: the bench's server CPU
    exec_seconds = Histogram(
        "agentfleet_sandbox_exec_seconds",
        "Command duration",
        buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
        registry=registry,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await svc.start()
        limits = limits_report(svc.backend)
        if limits is not None:  # uvicorn's logger: shown at serve-sandbox's default level
            logging.getLogger("uvicorn.error").info(
                "sandbox limits (%s backend): %s", svc.backend_name, _describe(limits)
            )
        try:
            yield
        finally:
            await svc.aclose()

    app = FastAPI(title="agentfleet sandbox server", lifespan=lifespan)
    app.state.service = svc
    stop_grace = StopGrace(stop_grace_s)
    app.state.drain = stop_grace.begin  # called as the server starts to stop
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(BearerAuth, token=token)  # added last: the outermost layer
    if token:
        document_bearer(app)

    # errors: always JSON {"error": ...} ------------------------------------------------
    @app.exception_handler(SandboxError)
    async def sandbox_error(request: Request, exc: SandboxError) -> JSONResponse:
        if isinstance(exc, SandboxBusy):
            wait = max(1, round(exc.retry_after))
            return _error(
                429, str(exc), {"Retry-After": str(wait)}, type="SandboxBusy", retry_after=wait
            )
        return _error(exc.status, str(exc), type=type(exc).__name__)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        try:
            detail = jsonable_encoder(exc.errors(), custom_encoder={bytes: repr})
        except Exception:
            detail = repr(exc.errors())
        malformed = any(e.get("type") == "json_invalid" for e in exc.errors())
        message = "malformed JSON body" if malformed else "invalid request"
        return _error(422, message, detail=detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), error_headers(request, exc))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("sandbox server error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    # routes ------------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        health = {"status": "ok", "backend": svc.backend_name, "sandboxes": len(svc)}
        limits = limits_report(svc.backend)  # each limit's value and what enforces it
        return health if limits is None else {**health, "limits": limits}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        data = await asyncio.to_thread(generate_latest, registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    @app.post("/sandboxes", status_code=201, responses=errors(400, 404, 409, 413, 422, 429))
    async def create_sandbox(req: CreateSandbox, request: Request) -> SandboxInfo:
        # a client gone mid-create (cancelled runner) leaves nothing behind
        return await _unless_disconnected(request, svc.create(req), "sandbox not created")

    @app.get("/sandboxes")
    async def list_sandboxes() -> list[SandboxInfo]:
        return svc.list()

    @app.get("/sandboxes/{sandbox_id}", responses=errors(404, 422))
    async def get_sandbox(sandbox_id: str) -> SandboxInfo:
        return svc.get(sandbox_id)

    @app.post("/sandboxes/{sandbox_id}/exec", responses=errors(400, 404, 409, 413, 422, 429, 503))
    async def exec_command(sandbox_id: str, req: ExecRequest, request: Request) -> ExecResult:
        started = time.monotonic()
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is not None and not _KEY_RE.fullmatch(key):
            raise SandboxError("Idempotency-Key: 1 to 200 visible ASCII characters", 400)
        svc.get(sandbox_id)
        # Without a key, a client that goes away gets its command killed. With one, the
        # command belongs to the service: a retry with the same key picks up its result.
        result = await _unless_disconnected(
            request,
            svc.exec_request(sandbox_id, req, key),
            "command not finished (killed as the server stops)",
            stop_grace,
        )
        exec_seconds.observe(time.monotonic() - started)
        return result

    @app.get(
        "/sandboxes/{sandbox_id}/files",
        response_class=OctetStream,
        responses=errors(400, 403, 404, 413, 422),
    )
    async def read_file(sandbox_id: str, path: str = Query(...)) -> Response:
        data = await svc.read_file(sandbox_id, path)
        return Response(data, media_type="application/octet-stream")

    @app.put(
        "/sandboxes/{sandbox_id}/files",
        status_code=204,
        responses=errors(400, 403, 404, 413, 422),
        openapi_extra=BINARY_BODY,
    )
    async def write_file(sandbox_id: str, request: Request, path: str = Query(...)) -> Response:
        svc.get(sandbox_id)
        data = await request.body()
        await svc.write_file(sandbox_id, path, data)
        return Response(status_code=204)

    @app.delete("/sandboxes/{sandbox_id}", status_code=204, responses=errors(404, 422))
    async def delete_sandbox(sandbox_id: str) -> Response:
        await svc.delete(sandbox_id)
        return Response(status_code=204)

    return app


BACKENDS = ("process", "docker")


def make_backend(name: str, *, root: Path | str | None = None, **kw: Any) -> Backend:
    """A backend by name: ``process`` (``ProcessBackend(root, **kw)``) or ``docker``
    (``DockerBackend(root=root, **kw)``: ``image``, ``allow_images``, ...). Both take the
    limits ``memory_mb``, ``cpus``, ``pids_limit``, ``file_size_mb`` and ``cpu_time_s``."""
    if name == "process":
        from agentfleet.sandbox.process import ProcessBackend

        return ProcessBackend(root, **kw)
    if name == "docker":
        from agentfleet.sandbox.docker import DockerBackend

        return DockerBackend(root=root, **kw)
    raise ValueError(f"unknown sandbox backend {name!r} (available: {', '.join(BACKENDS)})")


def run_server(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    backend: str = "process",
    root: Path | str | None = None,
    backend_kw: dict[str, Any] | None = None,
    token: str | None = None,
    stop_grace_s: float = DEFAULT_STOP_GRACE_S,
    **service_kwargs: Any,
) -> int | None:
    """Serve the sandbox API until SIGINT or SIGTERM (blocking; used by ``agentfleet
    serve-sandbox``); return that signal's number once every sandbox is deleted.

    ``backend_kw`` goes to the backend (see :func:`make_backend`), ``service_kwargs`` to the
    :class:`SandboxService` (``reap_period_s``, ``max_sandboxes``, ``max_execs``, ...).
    ``token`` (default ``$AGENTFLEET_SANDBOX_TOKEN``): required from clients; binding a
    non-loopback ``host`` without one is refused (``ValueError``) before anything starts.
    """
    from agentfleet.serving import serve_until_signal, uvicorn_config

    token = server_token(token, TOKEN_ENV, host)
    backend_obj = make_backend(backend, root=root, **(backend_kw or {}))
    app = create_app(backend_obj, token=token, stop_grace_s=stop_grace_s, **service_kwargs)
    # At shutdown, running commands get stop_grace_s to finish; then they are killed (their
    # process groups) and answer 503; uvicorn's own limit comes after, then the lifespan
    # deletes the sandboxes.
    config = uvicorn_config(
        app, host, port, log_level="info", timeout_graceful_shutdown=stop_grace_s + _ANSWER_S
    )
    return serve_until_signal(config)
