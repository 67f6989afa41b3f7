"""The evaluation server: jobs over HTTP, persisted in SQLite, run by bounded workers.

Endpoints (JSON; every error is ``{"error": "..."}`` with a fitting status):

- ``POST /evaluations`` body :class:`EvalRequest` (idempotency key in the
  ``Idempotency-Key`` header or the ``idempotency_key`` field) -> 202
  ``{"job_id", "status"}`` for a new job; the same key and body -> 200 with the same job
  (never a second evaluation); the same key with another body -> 422; queue full -> 429
  with ``Retry-After``; unknown instance or split (when the evaluator has ``check``) -> 404.
  With ``Prefer: wait=N`` (RFC 7240; N capped at 60) the answer waits up to N s for the
  job: 200 with the whole job view (as the GET below) when it ended in time, else as
  above; ``Preference-Applied: wait=N`` says the wait was honoured.
- ``GET /evaluations/{job_id}?wait=SECONDS`` (0..60) long-polls until the job is done or
  failed -> ``{"job_id", "status", "reward", "speedup", "info", "error"}``.
- ``POST /evaluate`` the blocking form for old clients -> ``{"reward", "speedup", "info"}``.
- ``POST /workers/lease``, ``POST /workers/leases/{id}/heartbeat|release|result``: remote workers
  (``agentfleet eval-worker``, Ray actors) lease jobs from the same queue
  (:mod:`~agentfleet.evaluation.remote`).
- ``GET /healthz`` (never needs the token), ``GET /metrics`` (Prometheus text),
  ``GET /stats`` and ``POST /stats/reset`` (in-flight / peak / connections seen).

Test mode (``test_latency`` set): every evaluation sleeps that long and scores 1.0 / 1.0,
all at once without an explicit ``workers`` (to measure client concurrency).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentfleet.evaluation.http_views import job_view, prefer_wait, result_view
from agentfleet.evaluation.jobs import (
    DEFAULT_KEEP_DAYS,
    DEFAULT_MAX_ATTEMPTS,
    EvalMetrics,
    EvaluatorLike,
    JobManager,
    QueueFull,
    SubmitError,
    TestModeEvaluator,
)
from agentfleet.evaluation.leases import DEFAULT_LEASE_TTL_S
from agentfleet.evaluation.pinning import auto_workers, format_cpus, plan_cpu_sets
from agentfleet.evaluation.remote import RemoteWorkers, until_disconnected, worker_routes
from agentfleet.evaluation.sandboxes import (
    EvaluatorFactory,
    build_evaluator,
    default_evaluator_factory,
    open_sandboxes,
    real_evaluator,
)
from agentfleet.evaluation.schema import EvalRequest, EvalResult
from agentfleet.evaluation.store import JobRecord, JobStore
from agentfleet.http.auth import OPEN_PATHS, server_token
from agentfleet.http.guard import GuardMiddleware
from agentfleet.http.openapi import JSON_OBJECT, document_bearer, error_headers, errors
from agentfleet.tasks.defaults import DEFAULT_EVAL_PORT
from agentfleet.tasks.task import DatasetFileError

if TYPE_CHECKING:
    from agentfleet.evaluation.evaluator import EvalConfig

logger = logging.getLogger("agentfleet.evaluation")

DEFAULT_PORT = DEFAULT_EVAL_PORT
DEFAULT_MAX_BODY = 10 * 1024 * 1024
MAX_WAIT_S = 60.0
UNAUTHENTICATED_PATHS = OPEN_PATHS


def default_workers(cores_per_worker: int = 1) -> int:
    """``--workers auto``: the CPUs this process may use // ``cores_per_worker``, >= 1."""
    return auto_workers(cores_per_worker)


# app --------------------------------------------------------------------------------
_T = TypeVar("_T")


def _started(state: dict[str, Any], key: str, kind: type[_T]) -> _T:
    """What the app's lifespan put under ``key``; an error before it starts."""
    value = state.get(key)
    if value is None:
        raise RuntimeError("evaluation server is not started")
    assert isinstance(value, kind)
    return value


def create_app(
    evaluator: EvaluatorLike | None = None,
    *,
    db_path: str | Path | None = None,
    workers: int | None = None,
    queue_limit: int = 1000,
    token: str | None = None,
    test_latency: float | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    evaluator_factory: EvaluatorFactory | None = None,
    keep_days: float | None = DEFAULT_KEEP_DAYS,
    max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
    cores_per_worker: int = 1,
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
    worker_spec: dict[str, Any] | None = None,
    remote_workers: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
) -> FastAPI:
    """The evaluation server app; its ``lifespan`` owns the job store and the workers.

    Give an ``evaluator`` (not closed by the app), or an ``evaluator_factory`` called at
    start-up: it returns an evaluator (closed at shutdown if it has ``aclose``), an
    awaitable of one, or an async context manager yielding one (exited at shutdown); or
    ``test_latency`` for test mode. ``db_path=None`` keeps jobs in memory. ``workers``
    defaults to the usable CPUs // ``cores_per_worker`` (no limit in test mode); each
    worker's commands are pinned to its own ``cores_per_worker`` CPUs when the sets fit
    (:mod:`~agentfleet.evaluation.pinning`; 0: never pinned). ``keep_days`` and
    ``max_attempts``: see :class:`~agentfleet.evaluation.jobs.JobManager`. ``workers=0``:
    no local worker, remote workers (:mod:`~agentfleet.evaluation.remote`) run every job;
    their leases lapse ``lease_ttl_s`` after the last heartbeat; ``worker_spec`` is what
    they evaluate with (default in test mode: the same latency). ``remote_workers``: an
    async context manager factory entered once the jobs run (e.g. Ray actors), exited first.
    """
    if evaluator is None and evaluator_factory is None and test_latency is None:
        raise ValueError("create_app needs an evaluator, an evaluator_factory or test_latency")
    if queue_limit < 1:
        raise ValueError("queue_limit must be >= 1")
    if workers is None:
        n_workers: int | None = (
            None if test_latency is not None else default_workers(cores_per_worker)
        )
    else:
        n_workers = workers
    cpu_sets = (
        plan_cpu_sets(n_workers, cores_per_worker) if n_workers and test_latency is None else None
    )
    metrics = EvalMetrics()
    state: dict[str, Any] = {}
    if worker_spec is None:
        worker_spec = {"test_latency": test_latency} if test_latency is not None else {}

    def remote() -> RemoteWorkers:
        return _started(state, "remote", RemoteWorkers)

    def manager() -> JobManager:
        return _started(state, "manager", JobManager)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if test_latency is not None:
                ev: Any = TestModeEvaluator(test_latency)
            elif evaluator is not None:
                ev = evaluator
            else:
                assert evaluator_factory is not None
                ev = await build_evaluator(evaluator_factory, stack)
            store = await JobStore(db_path).open()
            stack.push_async_callback(store.close)
            jobs = JobManager(
                store,
                ev,
                workers=n_workers,
                queue_limit=queue_limit,
                metrics=metrics,
                keep_days=keep_days,
                max_attempts=max_attempts,
                cpu_sets=cpu_sets,
                lease_ttl_s=lease_ttl_s,
                worker_spec=worker_spec,
            )
            stack.push_async_callback(jobs.stop)
            stack.callback(state.pop, "manager", None)
            requeued = await jobs.start()
            leases = RemoteWorkers(jobs)
            leases.start()
            stack.push_async_callback(leases.stop)
            stack.callback(state.pop, "remote", None)
            state["manager"] = jobs
            state["remote"] = leases
            app.state.jobs, app.state.drain = jobs, jobs.drain  # drain: at shutdown, first
            if remote_workers is not None:
                await stack.enter_async_context(remote_workers())
            logger.info(
                "evaluation server started: workers=%s cpus=%s queue_limit=%d db=%s requeued=%d%s",
                n_workers if n_workers is not None else "unlimited",
                [format_cpus(c) for c in cpu_sets] if cpu_sets else "not pinned",
                queue_limit,
                db_path or ":memory:",
                requeued,
                f" test_latency={test_latency}" if test_latency is not None else "",
            )
            yield
        logger.info("evaluation server stopped")

    app = FastAPI(
        title="agentfleet evaluation server",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )

    # errors ------------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        if any(e["type"] == "json_invalid" for e in errors):
            return JSONResponse({"error": "malformed JSON body", "detail": errors}, 400)
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        return JSONResponse(
            {
                "error": f"invalid request: {where + ': ' if where else ''}{first['msg']}",
                "detail": errors,
            },
            422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, exc.status_code, headers=error_headers(request, exc)
        )

    @app.exception_handler(SubmitError)
    async def on_submit(request: Request, exc: SubmitError) -> JSONResponse:
        if isinstance(cause := exc.__cause__, DatasetFileError):  # the client gets no path
            logger.warning("refused a request: %s: %s", cause.path, cause.problem)
        if isinstance(exc, QueueFull):
            body = {"error": exc.message, "retry_after": exc.retry_after}
            return JSONResponse(body, exc.status, {"Retry-After": str(exc.retry_after)})
        return JSONResponse({"error": exc.message}, exc.status)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, 500)

    # endpoints ---------------------------------------------------------------------
    async def _submit(request: Request, req: EvalRequest) -> tuple[JobRecord, bool]:
        key = request.headers.get("idempotency-key") or req.idempotency_key
        if key is not None and len(key) > 200:
            raise SubmitError("Idempotency-Key longer than 200 characters", 422)
        return await manager().submit(req, key)

    @app.post(
        "/evaluations",
        status_code=202,
        responses={
            200: {
                "description": "the job already under this key, or ended within Prefer: wait",
                "content": JSON_OBJECT,
            },
            **errors(400, 404, 413, 422, 429),
        },
    )
    async def submit_evaluation(request: Request, req: EvalRequest) -> JSONResponse:
        job, created = await _submit(request, req)
        headers = {"Location": f"/evaluations/{job.id}"}
        wait = prefer_wait(request.headers.getlist("prefer"))
        if wait is not None:  # RFC 7240: answer with the result if it comes within ``wait``
            wait = min(wait, MAX_WAIT_S)
            headers["Preference-Applied"] = f"wait={wait:g}"
            headers["Vary"] = "Prefer"
            if not job.terminal and wait > 0:
                job = await _wait_job(request, job.id, wait) or job
            if job.terminal:
                return JSONResponse({**job_view(job), "created": created}, 200, headers)
        return JSONResponse(
            {"job_id": job.id, "status": job.status, "created": created},
            202 if created else 200,
            headers=headers,
        )

    async def _wait_job(request: Request, job_id: str, wait_s: float | None) -> JobRecord | None:
        """``manager().wait`` that also ends when the client goes away."""
        jobs = manager()
        if wait_s is not None and wait_s <= 0:
            return await jobs.wait(job_id, 0)
        waiter = asyncio.ensure_future(jobs.wait(job_id, wait_s))
        watcher = asyncio.ensure_future(until_disconnected(request))
        try:
            done, _ = await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (waiter, watcher):
                t.cancel()
            await asyncio.gather(waiter, watcher, return_exceptions=True)
        if waiter in done:
            return waiter.result()
        return await jobs.get(job_id)  # the client is gone: the answer goes nowhere anyway

    @app.get("/evaluations/{job_id}", responses=errors(404, 422))
    async def get_evaluation(
        request: Request, job_id: str, wait: float = Query(0.0, ge=0.0, le=MAX_WAIT_S)
    ) -> dict[str, Any]:
        job = await _wait_job(request, job_id, wait)
        if job is None:
            raise StarletteHTTPException(404, f"no evaluation job {job_id!r}")
        return job_view(job)

    @app.post("/evaluate", responses=errors(400, 404, 413, 422, 429, 503))
    async def evaluate_blocking(request: Request, req: EvalRequest) -> dict[str, Any]:
        job, _ = await _submit(request, req)
        done = await _wait_job(request, job.id, None)
        if done is None:  # pragma: no cover - jobs are never deleted
            raise StarletteHTTPException(404, f"no evaluation job {job.id!r}")
        if not done.terminal:
            raise StarletteHTTPException(503, "evaluation server is shutting down")
        return result_view(done)

    app.include_router(worker_routes(remote))

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        m = state.get("manager")
        if m is None:
            return {"status": "starting", "queued": 0, "running": 0, "workers": n_workers}
        slots = m.workers_view()
        return {
            "status": "ok",
            "queued": m.queued,
            "running": m.running,
            "workers": n_workers,
            "workers_busy": sum(1 for w in slots if w["job_id"] is not None),
            "worker_slots": slots,  # each worker's CPU set (None: not pinned) and job
            "queue_wait_mean_s": m.mean_queue_wait,
            "throughput_per_minute": m.throughput_per_minute(),
            "test_mode": test_latency is not None,
        }

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return manager().stats()

    @app.post("/stats/reset")
    async def stats_reset() -> dict[str, Any]:
        manager().reset_stats()
        return manager().stats()

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def on_client(client: tuple[str, int] | None) -> None:
        m = state.get("manager")
        if m is not None:
            m.note_client(client)

    app.add_middleware(GuardMiddleware, token=token, max_body=max_body, on_client=on_client)
    if token:
        document_bearer(app, UNAUTHENTICATED_PATHS)
    return app


# entry point ------------------------------------------------------------------------
def advertised_url(host: str, port: int) -> str:
    """The URL workers on other nodes reach this server at: ``host``, or this node's
    address when it listens on every interface."""
    if host in ("0.0.0.0", "::", ""):
        import socket

        host = socket.gethostbyname(socket.gethostname())
    return f"http://{host}:{port}"


def run_server(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    db_path: str | Path | None = None,
    workers: int | None = None,
    queue_limit: int = 1000,
    token: str | None = None,
    test_latency: float | None = None,
    sandbox_url: str | None = None,
    sandbox_token: str | None = None,
    evaluator_factory: EvaluatorFactory | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    log_level: str = "info",
    eval_config: EvalConfig | None = None,
    dataset_roots: Sequence[str | Path] = (),
    confine: str | None = None,
    keep_days: float | None = DEFAULT_KEEP_DAYS,
    max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
    cores_per_worker: int = 1,
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
    ray_address: str | None = None,
    ray_workers: int | None = None,
) -> int | None:
    """Serve until SIGINT or SIGTERM (the ``agentfleet serve-eval`` command); return that
    signal's number after the graceful shutdown (running jobs cancelled, store closed).

    Binding a non-loopback ``host`` needs a ``token`` (or ``AGENTFLEET_EVAL_TOKEN``).
    ``sandbox_token``: sent to the sandbox server at ``sandbox_url`` (default
    ``$AGENTFLEET_SANDBOX_TOKEN``).
    Without ``test_latency`` or ``evaluator_factory``, the real evaluator is built at
    start-up by :func:`default_evaluator_factory` with ``eval_config`` and ``dataset_roots``
    (requests' datasets: the bundled ones and those under these folders, else 404); its
    in-process sandboxes are confined as ``confine`` says (default: ``required`` beyond
    loopback, since the server runs submitted patches, else ``auto``).
    ``ray_address`` (``auto``, or ``host:port``): also run ``ray_workers`` (default: the
    cluster's free CPUs // ``cores_per_worker``) Ray actors that lease jobs from this
    server (:mod:`~agentfleet.evaluation.ray_workers`), started before it (no room:
    ``RayRoomError``, a ``ValueError``); local ``workers`` then default to 0.
    """
    from agentfleet.serving import serve_until_signal, uvicorn_config

    token = server_token(token, "AGENTFLEET_EVAL_TOKEN", host)
    if test_latency is None and evaluator_factory is None:
        from agentfleet.sandbox.process import default_confine

        evaluator_factory = default_evaluator_factory(
            sandbox_url, eval_config, sandbox_token, dataset_roots, confine or default_confine(host)
        )
    remote_workers: Callable[[], AbstractAsyncContextManager[Any]] | None = None
    actors = None
    if ray_address is not None:
        from agentfleet.evaluation.ray_workers import launch_ray_eval_workers, stopped_on_exit

        if port == 0:
            raise ValueError("--ray-address needs a fixed --port (the actors connect to it)")
        workers = 0 if workers is None else workers
        # before the server starts: no room on the cluster is a ValueError here (a line
        # from the CLI), not a failed start-up; the actors wait for the server meanwhile
        actors = launch_ray_eval_workers(
            ray_address,
            server_url=advertised_url(host, port),
            token=token,
            workers=ray_workers,
            cores_per_worker=cores_per_worker,
            confine=confine or "auto",
            dataset_roots=dataset_roots,
            test_latency=test_latency,
        )
        remote_workers = functools.partial(stopped_on_exit, actors)
    try:
        spec: dict[str, Any] = {}
        if test_latency is not None:
            spec["test_latency"] = test_latency
        elif eval_config is not None:
            spec["config"] = eval_config.model_dump(mode="json")
        app = create_app(
            None,
            db_path=db_path,
            workers=workers,
            queue_limit=queue_limit,
            token=token,
            test_latency=test_latency,
            max_body=max_body,
            evaluator_factory=evaluator_factory,
            keep_days=keep_days,
            max_attempts=max_attempts,
            cores_per_worker=cores_per_worker,
            lease_ttl_s=lease_ttl_s,
            worker_spec=spec,
            remote_workers=remote_workers,
        )
        config = uvicorn_config(app, host, port, log_level=log_level, timeout_graceful_shutdown=5)
        # the actors stop while the server still listens: their leases come back uncounted
        before_stop = None if actors is None else functools.partial(asyncio.to_thread, actors.stop)
        return serve_until_signal(config, before_stop)
    finally:
        if actors is not None:  # stopped at shutdown already, unless the server never started
            actors.stop()


__all__ = [
    "DEFAULT_PORT",
    "EvalRequest",
    "EvalResult",
    "EvaluatorLike",
    "create_app",
    "default_evaluator_factory",
    "open_sandboxes",
    "real_evaluator",
    "run_server",
]
