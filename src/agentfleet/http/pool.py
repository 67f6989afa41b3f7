"""HttpPool: one aiohttp ClientSession per event loop, shared by every agent on that loop."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncGenerator, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import aiohttp
from yarl import URL

from agentfleet.http.errors import (  # noqa: F401 (re-exported)
    HttpConnectionError,
    HttpError,
    HttpStatusError,
    HttpTimeoutError,
    Response,
    wrap_error,
)
from agentfleet.http.limits import (  # noqa: F401 (re-exported)
    DEFAULT_TIMEOUTS,
    EVAL_TIMEOUTS,
    LLM_TIMEOUTS,
    PRESETS,
    PoolLimits,
    Timeouts,
    exec_timeouts,
    preset_for_fleet,
    resolve_limits,
)
from agentfleet.http.metrics import (
    AttemptTrace,
    PoolMetrics,
    TargetMetrics,
    error_kind,
    make_trace_config,
    track_pool,
)
from agentfleet.http.retry import (  # noqa: F401 (re-exported)
    NO_RETRY,
    BodyCheck,
    RetryPolicy,
    body_refused,
    build_retrying,
    is_connect_error,
    is_idempotent,
    is_retryable_exception,
    is_retryable_response,
    json_object,
)

if TYPE_CHECKING:  # tenacity is imported when a retry happens, not before
    from tenacity import RetryCallState

log = logging.getLogger("agentfleet.http")

__all__ = ["HttpPool"]  # and, for older imports, the names re-exported above


@dataclass
class _Defaults:
    limits: PoolLimits | str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)


_defaults = _Defaults()
# The pool holds its loop only weakly (else this entry would keep both alive forever);
# aclose() drops the entry.
_loop_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, HttpPool] = (
    weakref.WeakKeyDictionary()
)
LONG_POLL_RESERVE = 0.25  # share of each host's slots long polls may never take


class HttpPool:
    """Pooled HTTP client bound to the event loop it is first used in.

    Owned by ``async with`` / ``await pool.aclose()``; :meth:`for_loop` gives the loop's
    shared pool, closed automatically when ``asyncio.run`` shuts the loop down.

    Requests wait for a slot on our own semaphores (one of ``limit_per_host`` per
    ``scheme://host:port`` and one of ``limit`` overall) *before* aiohttp sees them, so
    time queued for a connection is never charged to the request's timeout. Requests
    marked ``long_poll=True`` may hold at most ``limit_per_host`` minus a reserve
    (:data:`LONG_POLL_RESERVE`) of a host's slots, so short calls never queue behind
    long polls alone.
    """

    def __init__(
        self,
        limits: PoolLimits | str | None = None,
        *,
        retry: RetryPolicy | None = None,
        keepalive_timeout: float = 15.0,
        name: str | None = None,
    ) -> None:
        self.limits = resolve_limits(limits)
        self.retry = retry or _defaults.retry
        self.keepalive_timeout = keepalive_timeout
        default_name = track_pool(self)
        self.name = name or default_name
        self.metrics = PoolMetrics()
        self._session: aiohttp.ClientSession | None = None
        self._loop_ref: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._closed = False
        self._global_slots: asyncio.Semaphore | None = None
        self._host_slots: dict[str, asyncio.Semaphore] = {}
        self._long_slots: dict[str, asyncio.Semaphore] = {}
        self._shutdown_agen: AsyncGenerator[None, None] | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<HttpPool {self.name} {state} limit={self.limits.limit} "
            f"per_host={self.limits.limit_per_host}>"
        )

    # ownership -----------------------------------------------------------------------
    @classmethod
    def configure_default(
        cls, limits: PoolLimits | str | None = None, retry: RetryPolicy | None = None
    ) -> None:
        """Settings for pools that :meth:`for_loop` creates from now on."""
        # resolved now: an unknown preset fails here, not at the first request
        _defaults.limits = resolve_limits(limits) if limits is not None else None
        if retry is not None:
            _defaults.retry = retry

    @classmethod
    def reset_default(cls) -> None:
        """Back to the built-in defaults (small preset, default retry policy)."""
        _defaults.limits = None
        _defaults.retry = RetryPolicy()

    @classmethod
    def for_loop(cls) -> HttpPool:
        """The running loop's shared pool (created on first use)."""
        loop = asyncio.get_running_loop()
        pool = _loop_pools.get(loop)
        if pool is None or pool._closed:
            pool = cls(_defaults.limits)
            _loop_pools[loop] = pool
            pool._bind(loop)
        return pool

    async def __aenter__(self) -> HttpPool:
        self._bind(asyncio.get_running_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session and its connections. Idempotent; must run on the pool's loop."""
        if self._session is not None:
            self._check_loop(asyncio.get_running_loop())
        self._closed = True
        loop = self.loop
        if loop is not None and _loop_pools.get(loop) is self:
            del _loop_pools[loop]
        # Semaphores remember their loop once waited on: drop them with the session.
        self._global_slots = None
        self._host_slots.clear()
        self._long_slots.clear()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
            # Let the transports run connection_lost (closing their sockets) now.
            await asyncio.sleep(0)
        agen, self._shutdown_agen = self._shutdown_agen, None
        if agen is not None:
            # Finish the shutdown hook too, so that it is never finalized later (possibly
            # after its loop is closed). Its ``finally`` calls aclose() again: a no-op.
            await agen.aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop this pool is bound to (None until first used, or once gone)."""
        return self._loop_ref() if self._loop_ref is not None else None

    def _check_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        bound = self.loop
        if self._loop_ref is not None and bound is not loop:
            raise RuntimeError(
                f"{self!r} is bound to another event loop ({bound!r}); an HttpPool "
                "must only be used on the loop (and thread) that first used it. Use "
                "HttpPool.for_loop() to get the current loop's pool."
            )

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop_ref is None:
            self._loop_ref = weakref.ref(loop)
        else:
            self._check_loop(loop)

    def _get_session(self) -> aiohttp.ClientSession:
        self._bind(asyncio.get_running_loop())
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.limits.limit,
                limit_per_host=self.limits.limit_per_host,
                keepalive_timeout=self.keepalive_timeout,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=DEFAULT_TIMEOUTS.client_timeout(),
                trace_configs=[make_trace_config()],
            )
            # Whoever created the pool, its session is closed when asyncio.run() ends.
            _close_at_shutdown(self)
        return self._session

    def _slots(self, origin: str) -> tuple[asyncio.Semaphore, asyncio.Semaphore]:
        if self._global_slots is None:
            self._global_slots = asyncio.Semaphore(self.limits.limit)
        host = self._host_slots.get(origin)
        if host is None:
            host = self._host_slots[origin] = asyncio.Semaphore(self.limits.limit_per_host)
        return host, self._global_slots

    def long_poll_slots(self) -> int:
        """How many of a host's slots long polls may hold at once."""
        per_host = self.limits.limit_per_host
        return max(1, per_host - max(1, round(per_host * LONG_POLL_RESERVE)))

    def _long_slot(self, origin: str) -> asyncio.Semaphore:
        sem = self._long_slots.get(origin)
        if sem is None:
            sem = self._long_slots[origin] = asyncio.Semaphore(self.long_poll_slots())
        return sem

    # requests ------------------------------------------------------------------------
    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        data: bytes | str | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeouts | None = None,
        idempotent: bool | None = None,
        retry: RetryPolicy | None = None,
        target: str | None = None,
        long_poll: bool = False,
        accept: BodyCheck | None = None,
    ) -> Response:
        """Send a request and read the whole body.

        Idempotent requests (see :func:`agentfleet.http.retry.is_idempotent`) are retried
        per ``retry`` (default: the pool's policy) on connection errors and 429/502/503/504;
        others only on a connect failure (the request never left). ``accept``: a check of
        a success's body (e.g. :func:`json_object`); a body it refuses (False or
        ``ValueError``) is retried like a 502 and, once retries run out, returned as is for
        the caller to refuse. A final error status is *returned* (use
        ``raise_for_status()``); a connection failure raises :class:`HttpConnectionError`,
        a timeout :class:`HttpTimeoutError`. ``target`` labels the metrics (default
        ``host:port``). ``long_poll=True`` marks a request the server may hold open
        (e.g. ``?wait=30``): it also takes one of the host's long-poll slots.
        """
        session = self._get_session()
        method = method.upper()
        u = URL(url)
        if not u.is_absolute() or u.host is None:
            raise ValueError(f"HttpPool needs an absolute URL, got {url!r}")
        origin = f"{u.scheme}://{u.host}:{u.port}"
        tm = self.metrics.target(target or f"{u.host}:{u.port}")
        policy = retry or self.retry
        # A request that is not idempotent is resent only if it never left.
        retry_exc = (
            is_retryable_exception
            if is_idempotent(method, headers, idempotent)
            else is_connect_error
        )
        retry_idempotent = retry_exc is is_retryable_exception

        def retry_result(resp: Response) -> bool:
            if not retry_idempotent:
                return False
            return body_refused(resp, accept) or is_retryable_response(resp)

        client_timeout = (timeout or DEFAULT_TIMEOUTS).client_timeout()
        attempts = 0

        async def attempt() -> Response:
            nonlocal attempts
            attempts += 1
            resp = await self._attempt(
                session,
                method,
                url,
                origin,
                tm,
                json=json,
                data=data,
                params=params,
                headers=headers,
                timeout=client_timeout,
                long_poll=long_poll,
            )
            resp.attempts = attempts
            if body_refused(resp, accept):
                tm.errors["bad_body"] += 1
            return resp

        def on_retry(state: RetryCallState) -> None:
            tm.retries += 1
            outcome = state.outcome
            why: object = "?"
            if outcome is not None:
                why = (
                    repr(outcome.exception())
                    if outcome.failed
                    else f"HTTP {getattr(outcome.result(), 'status', '?')}"
                )
            log.info(
                "retrying %s %s in %.2fs (attempt %d failed: %s)",
                method,
                url,
                state.upcoming_sleep,
                state.attempt_number,
                why,
            )

        try:
            if policy.attempts <= 1:
                return await attempt()
            # The first attempt runs bare: most succeed, and tenacity's machinery (built per
            # call) costs more than the request path itself. Only a retryable outcome enters
            # the retry loop, which replays it as its attempt 1.
            began = time.monotonic()
            try:
                first = await attempt()
            except Exception as exc:
                if not retry_exc(exc):
                    raise
                replay: list[Response | Exception] = [exc]
            else:
                if not retry_result(first):
                    return first
                replay = [first]

            async def replay_then_attempt() -> Response:
                if replay:
                    outcome = replay.pop()
                    if isinstance(outcome, Exception):
                        raise outcome
                    return outcome
                return await attempt()

            # the time budget covers the bare first attempt too
            left = replace(policy, budget_s=max(0.0, policy.budget_s - (time.monotonic() - began)))
            retrying = build_retrying(
                left, on_retry, retry_exception=retry_exc, retry_result=retry_result
            )
            result: Response = await retrying(replay_then_attempt)
            return result
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise wrap_error(exc, method, url, attempts) from exc

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        origin: str,
        tm: TargetMetrics,
        *,
        long_poll: bool = False,
        **kw: Any,
    ) -> Response:
        # Long-poll slot, then per-host, then global: a request never holds a wider slot
        # while waiting on a narrower one, and the fixed order cannot deadlock.
        gates = [*([self._long_slot(origin)] if long_poll else []), *self._slots(origin)]
        taken = 0
        waited_from = time.monotonic()
        tm.waiting += 1
        try:
            for gate in gates:
                await gate.acquire()
                taken += 1
        except BaseException:
            for gate in gates[:taken]:
                gate.release()
            raise
        finally:
            tm.waiting -= 1
        started = time.monotonic()
        self.metrics.observe_queue_wait(tm, started - waited_from)
        trace = AttemptTrace(tm)
        try:
            async with session.request(method, url, trace_request_ctx=trace, **kw) as resp:
                body = await resp.read()
                # aiohttp's headers are an immutable CIMultiDictProxy already: kept as is
                response = Response(resp.status, resp.headers, body, str(resp.url))
        except asyncio.CancelledError:
            tm.cancelled += 1
            raise
        except BaseException as exc:
            if not trace.error_recorded and isinstance(exc, Exception):
                tm.errors[error_kind(exc)] += 1
            raise
        finally:
            for gate in gates:
                gate.release()
        self.metrics.observe_latency(tm, time.monotonic() - started)
        if response.status >= 400:
            tm.errors[f"http_{response.status}"] += 1
        return response

    def open_connections(self) -> int | None:
        """Connections the connector holds now (idle + in use); None if it cannot tell."""
        connector = self._session.connector if self._session is not None else None
        if connector is None:
            return 0
        try:
            idle = sum(len(v) for v in getattr(connector, "_conns", {}).values())
            return idle + len(getattr(connector, "_acquired", ()))
        except (TypeError, AttributeError):  # aiohttp internals changed
            return None

    def stats(self) -> dict[str, Any]:
        """JSON-serialisable snapshot: limits, totals and per-target metrics."""
        snap = self.metrics.snapshot()
        return {
            "name": self.name,
            "limits": {"limit": self.limits.limit, "per_host": self.limits.limit_per_host},
            "closed": self._closed,
            "totals": snap["totals"],
            "targets": snap["targets"],
        }


def _close_at_shutdown(pool: HttpPool) -> None:
    """Close ``pool`` when the loop's async generators are shut down (end of asyncio.run)."""

    async def closer() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            pool._shutdown_agen = None  # we are running: aclose() must not aclose() us
            await pool.aclose()

    agen = closer()
    pool._shutdown_agen = agen  # strong ref: the loop keeps only a weak one

    # The first step registers the generator with the running loop, whose
    # shutdown_asyncgens() (called by asyncio.run) then runs its ``finally``.
    step = cast(Coroutine[Any, Any, None], agen.__anext__())
    try:
        step.send(None)
    except StopIteration:
        pass
