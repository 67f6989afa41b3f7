"""Client of the evaluation server: ``evaluate_info`` and :class:`EvalClient`.

An evaluation is a job: ``POST /evaluations`` with an ``Idempotency-Key`` (the same key on
every retry, so a retry never evaluates twice), then long polls of
``GET /evaluations/{id}?wait=...`` until it is done. Requests go through the event loop's
shared :class:`~agentfleet.http.HttpPool`: one pool of keep-alive connections for every
agent on the loop, never a session per call. The pool, and aiohttp with it, is imported on
the first request, in a thread: importing this module loads no HTTP stack, and loading it
never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from agentfleet.evaluation.client_errors import (
    EvalClientError,
    EvalRejected,
    EvalTimeout,
    error_message,
    failure,
    has_job_id,
    json_body,
    retry_after,
)
from agentfleet.evaluation.long_calls import long_calls
from agentfleet.evaluation.schema import EvalRequest, EvalResult
from agentfleet.http.limits import EVAL_TIMEOUTS, Timeouts
from agentfleet.http.response import HttpError, Response
from agentfleet.http.retry import (
    TRANSPORT_STATUSES,
    BodyCheck,
    RetryPolicy,
    is_transport_error,
    json_object,
)
from agentfleet.tasks import DEFAULT_DATASET, DEFAULT_SPLIT

if TYPE_CHECKING:
    from agentfleet.http.pool import HttpPool

logger = logging.getLogger("agentfleet.evaluation")

TOKEN_ENV = "AGENTFLEET_EVAL_TOKEN"
MAX_POLL_WAIT = 60.0  # the server's cap on ``wait``
TERMINAL = frozenset({"done", "failed"})
_MAX_RESUBMITS = 3  # a job unknown to a restarted (in-memory) server is submitted again
SUBMIT_TIMEOUT = 3600.0  # default limit on waiting out a full queue (evaluate_info's timeout)
# How long a call rides over a server it cannot reach (restarting, redeployed), after the
# pool's own retries: jobs are durable and keyed, so the submit or poll is simply sent again.
OUTAGE_S = 300.0
_OUTAGE_BACKOFF_MAX_S = 10.0


_POOL_MODULE = "agentfleet.http.pool"
_pool_loaded = False


def _imported(name: str) -> bool:
    """``name`` is in ``sys.modules`` and its import has finished (the test ``import``
    itself makes before it waits on a module another thread is still importing)."""
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    return module is not None and not getattr(spec, "_initializing", False)


class EvalClient:
    """Talks to one evaluation server.

    ``pool``: an :class:`HttpPool` (not closed by the client); default the running loop's
    shared pool. ``token``: bearer token, default ``$AGENTFLEET_EVAL_TOKEN``. ``outage_s``:
    how long a submit or poll keeps trying a server it cannot reach (connection refused or
    broken, a 502/503/504 after the pool's retries) before :class:`EvalClientError`; 0
    fails at the pool's last retry (``health`` always does); None: :data:`OUTAGE_S`.
    """

    def __init__(
        self,
        base_url: str,
        pool: HttpPool | None = None,
        token: str | None = None,
        *,
        poll_wait: float = 30.0,
        submit_timeouts: Timeouts = EVAL_TIMEOUTS,
        outage_s: float | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.outage_s = max(0.0, OUTAGE_S if outage_s is None else outage_s)
        self._pool = pool
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        self.poll_wait = min(MAX_POLL_WAIT, max(0.0, poll_wait))
        self.submit_timeouts = submit_timeouts

    @property
    def pool(self) -> HttpPool:
        """The pool given, else the running loop's (imported here if no request has)."""
        if self._pool is not None:
            return self._pool
        from agentfleet.http.pool import HttpPool

        return HttpPool.for_loop()

    async def _ready_pool(self) -> HttpPool:
        """:attr:`pool`; the first call of the process imports the pool module (aiohttp,
        and the SSL contexts it builds at import) in a thread, off the event loop."""
        global _pool_loaded
        if not _pool_loaded:
            if not _imported(_POOL_MODULE):  # not yet, or another thread is importing it
                await asyncio.to_thread(importlib.import_module, _POOL_MODULE)
            _pool_loaded = True
        return self.pool

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if extra:
            headers.update(extra)
        return headers

    async def _request(
        self, pool: HttpPool, method: str, path: str, *, ride: bool = True, **kw: Any
    ) -> Response:
        """:meth:`_call`, sent again while the server cannot be reached, for up to
        ``outage_s`` (``ride``), with a growing, jittered pause (clients of a restarted
        server do not all come back at once)."""
        ride = ride and self.outage_s > 0
        down_since: float | None = None
        pause = 0.5
        while True:
            resp: Response | None = None
            try:
                resp = await self._call(pool, method, path, **kw)
                if not ride or resp.status not in TRANSPORT_STATUSES:
                    return resp
                problem = f"HTTP {resp.status}"
            except EvalClientError as exc:
                if not ride or not is_transport_error(exc.__cause__ or exc):
                    raise
                failure, problem = exc, exc.message
            now = time.monotonic()
            if down_since is None:
                down_since = now
                logger.info(
                    "evaluation server %s unreachable (%s): trying again for up to %gs",
                    self.base_url, problem, self.outage_s,
                )  # fmt: skip
            left = down_since + self.outage_s - now
            if left <= 0:
                if resp is not None:  # the caller reports the status as before
                    return resp
                raise EvalClientError(
                    f"{problem} (unreachable for {now - down_since:.0f}s)",
                    status_code=failure.status_code,
                ) from failure
            await asyncio.sleep(min(left, pause * random.uniform(0.5, 1.0)))
            pause = min(pause * 2, _OUTAGE_BACKOFF_MAX_S)

    async def _call(
        self,
        pool: HttpPool,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeouts: Timeouts,
        long_poll: bool = False,
        accept: BodyCheck | None = json_object,
        retry: RetryPolicy | None = None,
    ) -> Response:
        """One call through the pool (its retry policy unless ``retry``); a success whose
        body ``accept`` refuses is retried like a 5xx (then returned; the caller raises)."""
        import aiohttp  # loaded with the pool

        url = f"{self.base_url}{path}"
        try:
            return await pool.request(
                method,
                url,
                json=json,
                params=params,
                headers=self._headers(headers),
                timeout=timeouts,
                idempotent=True,  # GETs, and POSTs that carry an Idempotency-Key
                long_poll=long_poll,  # held open by the server: never all of a host's slots
                accept=accept,
                retry=retry,
            )
        except EvalClientError:
            raise
        except HttpError as exc:
            status = getattr(exc, "status", None)
            said = str(exc)  # the pool's errors name the request already
            raise EvalClientError(
                said if said.startswith(f"{method} {url} ") else f"{method} {url} failed: {said}",
                status_code=status if isinstance(status, int) else None,
            ) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise EvalClientError(
                f"{method} {url} failed: {type(exc).__name__}: {exc}".rstrip(": ")
            ) from exc

    async def submit(
        self,
        req: EvalRequest,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = SUBMIT_TIMEOUT,
    ) -> str:
        """Submit ``req`` as a job and return its id. The key (given, the request's, or a
        new uuid4) is sent on every attempt. A 429 still standing after the pool's own
        retries is waited out (``Retry-After``) and resubmitted for up to ``timeout``
        seconds (None: no limit); then :class:`EvalTimeout`."""
        data = await self._submit(req, idempotency_key=idempotency_key, timeout=timeout)
        return str(data["job_id"])

    async def _submit(
        self,
        req: EvalRequest,
        *,
        idempotency_key: str | None,
        timeout: float | None,
        wait: float = 0.0,
    ) -> dict[str, Any]:
        """:meth:`submit`'s answer. ``wait`` > 0 asks the server to hold it until the job
        ends (``Prefer: wait=N``): then it is the finished job's view (status ``done`` or
        ``failed``), else ``{"job_id", "status"}`` as from any server."""
        key = idempotency_key or req.idempotency_key or uuid.uuid4().hex
        body = req.model_dump(mode="json")
        body["idempotency_key"] = key
        deadline = None if timeout is None else time.monotonic() + timeout
        pool = await self._ready_pool()
        while True:
            async with long_calls.hold(pool, wait) as held:
                headers = {"Idempotency-Key": key}
                if held > 0:
                    headers["Prefer"] = f"wait={held:g}"
                resp = await self._request(
                    pool,
                    "POST",
                    "/evaluations",
                    json=body,
                    headers=headers,
                    timeouts=self.submit_timeouts,
                    long_poll=held > 0,
                    accept=has_job_id,
                )
            if resp.status in (200, 201, 202):
                data = json_body(resp, "submit")
                if not isinstance(data.get("job_id"), str):
                    raise EvalClientError(f"server answered without a job id: {resp.text()[:200]}")
                return data
            if resp.status == 429:
                delay = min(60.0, max(0.05, retry_after(resp)))
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise EvalTimeout(
                            f"evaluation queue of {self.base_url} still full after {timeout:g}s "
                            f"of retries ({error_message(resp)})",
                            status_code=429,
                        )
                    delay = min(delay, left)
                logger.debug("evaluation queue full, resubmitting in %.2fs", delay)
                await asyncio.sleep(delay)
                continue
            raise failure(resp, "submit")

    async def status(self, job_id: str, wait: float = 0.0) -> dict[str, Any]:
        """The job's state; ``wait`` > 0 long-polls until it ends or ``wait`` expires."""
        wait = min(MAX_POLL_WAIT, max(0.0, wait))
        timeouts = Timeouts(total=wait + 120, connect=60, sock_connect=30, sock_read=wait + 60)
        pool = await self._ready_pool()
        async with long_calls.hold(pool, wait, always=True):
            resp = await self._request(
                pool,
                "GET",
                f"/evaluations/{job_id}",
                params={"wait": f"{wait:g}"},
                timeouts=timeouts,
                long_poll=wait > 0,
            )
        if resp.status != 200:
            raise failure(resp, "status")
        return json_body(resp, "status")

    async def wait(self, job_id: str, *, poll_wait: float | None = None) -> dict[str, Any]:
        """Long-poll until the job is done or failed."""
        wait = self.poll_wait if poll_wait is None else poll_wait
        while True:
            data = await self.status(job_id, wait)
            if data.get("status") in TERMINAL:
                return data
            if wait <= 0:
                await asyncio.sleep(0.5)

    async def evaluate(
        self,
        req: EvalRequest,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> EvalResult:
        """Submit and wait. A failed job gives reward 0 with ``info["error"]`` and
        ``info["status"] == "failed"``. Raises :class:`EvalRejected` on a 4xx,
        :class:`EvalTimeout` when ``timeout`` expires, :class:`EvalClientError` otherwise."""
        key = idempotency_key or req.idempotency_key or uuid.uuid4().hex
        try:
            async with asyncio.timeout(timeout):
                data = await self._submit_and_wait(req, key, timeout)
        except TimeoutError as exc:
            raise EvalTimeout(
                f"evaluation of {req.instance_id} timed out after {timeout}s"
            ) from exc
        return _to_result(data)

    async def _submit_and_wait(
        self, req: EvalRequest, key: str, timeout: float | None
    ) -> dict[str, Any]:
        resubmits = 0
        while True:
            data = await self._submit(
                req,
                idempotency_key=key,
                timeout=SUBMIT_TIMEOUT if timeout is None else timeout,
                wait=self.poll_wait,
            )
            if data.get("status") in TERMINAL:  # answered within the wait: one request
                return data
            job_id = str(data["job_id"])
            try:
                return await self.wait(job_id)
            except EvalRejected as exc:
                if exc.status_code != 404 or resubmits >= _MAX_RESUBMITS:
                    raise
                resubmits += 1
                logger.warning(
                    "evaluation job %s vanished (server restarted?): resubmitting", job_id
                )

    async def health(self, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """The server's ``/healthz``; ``retry``: the probe's own policy (default the
        pool's)."""
        resp = await self._request(
            await self._ready_pool(),
            "GET",
            "/healthz",
            ride=False,  # a probe: says at once that the server is down
            timeouts=Timeouts(total=30, sock_read=30),
            retry=retry,
        )
        if resp.status != 200:
            raise failure(resp, "healthz")
        return json_body(resp, "healthz")


def _to_result(data: dict[str, Any]) -> EvalResult:
    info = data.get("info")
    info = dict(info) if isinstance(info, dict) else {}
    if data.get("status") == "failed":
        info["error"] = data.get("error") or info.get("error") or "evaluation failed"
        info["status"] = "failed"
        return EvalResult(reward=0.0, speedup=0.0, info=info)
    return EvalResult(
        reward=float(data.get("reward") or 0.0),
        speedup=float(data.get("speedup") or 0.0),
        info=info,
    )


async def evaluate_info(
    exit_status: str,
    result: str | None,
    container_id: str | None,
    instance_id: str,
    dataset_name: str | None,
    split: str | None,
    eval_server_url: str,
    *,
    idempotency_key: str | None = None,
    pool: HttpPool | None = None,
    poll_wait: float = 30.0,
    timeout: float | None = 3600,
    token: str | None = None,
    outage_s: float | None = None,
) -> tuple[float, float, dict[str, Any]]:
    """Evaluate one submission on the server at ``eval_server_url``: ``(reward, speedup,
    info)``.

    A refusal by the server (4xx: unknown instance, invalid request) returns
    ``(0.0, 0.0, {"error": ..., "status_code": ...})``; a failed evaluation returns
    ``(0.0, 0.0, {"error": ..., "status": "failed"})``. A transport failure that outlasts
    the pool's retries and ``outage_s`` of trying again (a server restarting), or the
    ``timeout``, raises :class:`EvalClientError`.
    """
    logger.info("Starting evaluation %s", instance_id)
    t0 = time.monotonic()
    try:
        try:
            req = EvalRequest(
                exit_status=exit_status,
                result=result,
                container_id=container_id,
                instance_id=instance_id,
                dataset_name=dataset_name if dataset_name is not None else DEFAULT_DATASET,
                split=split if split is not None else DEFAULT_SPLIT,
                idempotency_key=idempotency_key,
            )
        except ValidationError as exc:
            out: tuple[float, float, dict[str, Any]] = (
                0.0,
                0.0,
                {"error": f"invalid request: {exc.errors()[0].get('msg')}", "status_code": 422},
            )
        else:
            client = EvalClient(
                eval_server_url, pool=pool, token=token, poll_wait=poll_wait, outage_s=outage_s
            )
            try:
                res = await client.evaluate(req, idempotency_key=idempotency_key, timeout=timeout)
            except EvalRejected as exc:
                out = (0.0, 0.0, {"error": exc.message, "status_code": exc.status_code})
            else:
                out = res.as_tuple()
    except EvalClientError as exc:
        logger.warning(
            "Evaluation error %s after %.2fs: %s", instance_id, time.monotonic() - t0, exc
        )
        raise
    logger.info("Evaluation completed %s %.2f", instance_id, time.monotonic() - t0)
    return out


def evaluate_info_sync(
    exit_status: str,
    result: str | None,
    container_id: str | None,
    instance_id: str,
    dataset_name: str | None,
    split: str | None,
    eval_server_url: str,
    **kwargs: Any,
) -> tuple[float, float, dict[str, Any]]:
    """``evaluate_info`` for sync code (thread workers): runs it on the process's one
    background loop (:func:`agentfleet.http.background.run_sync`), so every thread shares
    that loop's pool and its connections. Inside a running loop: ``RuntimeError``."""
    from agentfleet.http.background import run_sync

    return run_sync(
        evaluate_info(
            exit_status,
            result,
            container_id,
            instance_id,
            dataset_name,
            split,
            eval_server_url,
            **kwargs,
        ),
        what="evaluate_info_sync() (use 'await evaluate_info(...)')",
    )


__all__ = [
    "EvalClient",
    "EvalClientError",
    "EvalRejected",
    "EvalTimeout",
    "evaluate_info",
    "evaluate_info_sync",
]
