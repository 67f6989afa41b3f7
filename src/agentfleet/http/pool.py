"""HttpPool: one aiohttp ClientSession per event loop, shared by every agent on that loop."""

from __future__ import annotations

import asyncio
import json as jsonlib
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass(frozen=True)
class PoolLimits:
    limit: int
    limit_per_host: int


PRESETS: dict[str, PoolLimits] = {
    "small": PoolLimits(100, 50),
    "medium": PoolLimits(200, 100),
    "large": PoolLimits(500, 200),
}


def preset_for_fleet(n_agents: int) -> PoolLimits:
    """The origin's advice: 100/50 up to 10 agents, 200/100 up to 50, 500/200 above."""
    if n_agents <= 10:
        return PRESETS["small"]
    if n_agents <= 50:
        return PRESETS["medium"]
    return PRESETS["large"]


def resolve_limits(limits: PoolLimits | str | None) -> PoolLimits:
    if limits is None:
        return PRESETS["small"]
    if isinstance(limits, PoolLimits):
        return limits
    if limits in PRESETS:
        return PRESETS[limits]
    raise ValueError(f"unknown pool preset {limits!r} (choose from {', '.join(PRESETS)})")


@dataclass(frozen=True)
class Timeouts:
    """Per-call timeouts. ``total=None`` means bounded by ``sock_read`` only."""

    total: float | None = None
    connect: float | None = 60.0
    sock_connect: float | None = 30.0
    sock_read: float | None = 300.0

    def client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.total,
            connect=self.connect,
            sock_connect=self.sock_connect,
            sock_read=self.sock_read,
        )


EVAL_TIMEOUTS = Timeouts(total=3600, connect=60, sock_read=300)
LLM_TIMEOUTS = Timeouts(total=None, connect=60, sock_read=600)
DEFAULT_TIMEOUTS = Timeouts(total=300, connect=60, sock_read=300)


def exec_timeouts(command_timeout: float | None, margin: float = 30.0) -> Timeouts:
    """Sandbox exec: the command's own timeout plus a margin."""
    budget = (command_timeout or 60.0) + margin
    return Timeouts(total=budget, connect=60, sock_read=budget)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    wait_min: float = 4.0
    wait_max: float = 60.0
    budget_s: float = 900.0  # total time across attempts


NO_RETRY = RetryPolicy(attempts=1)


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str = ""

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


@dataclass
class _Defaults:
    limits: PoolLimits | str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)


_defaults = _Defaults()
_loop_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, HttpPool] = (
    weakref.WeakKeyDictionary()
)


class HttpPool:
    """Pooled HTTP client bound to the event loop it is first used in.

    Owned by ``async with`` / ``await pool.aclose()``; :meth:`for_loop` gives the loop's
    shared pool, closed automatically when ``asyncio.run`` shuts the loop down.
    """

    def __init__(
        self,
        limits: PoolLimits | str | None = None,
        *,
        retry: RetryPolicy | None = None,
        keepalive_timeout: float = 15.0,
    ) -> None:
        self.limits = resolve_limits(limits)
        self.retry = retry or _defaults.retry
        self.keepalive_timeout = keepalive_timeout
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # ownership -----------------------------------------------------------------------
    @classmethod
    def configure_default(
        cls, limits: PoolLimits | str | None = None, retry: RetryPolicy | None = None
    ) -> None:
        """Settings for pools that :meth:`for_loop` creates from now on."""
        _defaults.limits = limits
        if retry is not None:
            _defaults.retry = retry

    @classmethod
    def for_loop(cls) -> HttpPool:
        """The running loop's shared pool (created on first use)."""
        loop = asyncio.get_running_loop()
        pool = _loop_pools.get(loop)
        if pool is None or pool._closed:
            pool = cls(_defaults.limits)
            _loop_pools[loop] = pool
            pool._bind(loop)
            _close_at_shutdown(pool)
        return pool

    async def __aenter__(self) -> HttpPool:
        self._bind(asyncio.get_running_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("HttpPool is bound to another event loop; use one pool per loop")

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("HttpPool is closed")
        self._bind(asyncio.get_running_loop())
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.limits.limit,
                limit_per_host=self.limits.limit_per_host,
                keepalive_timeout=self.keepalive_timeout,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=DEFAULT_TIMEOUTS.client_timeout()
            )
        return self._session

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
    ) -> Response:
        session = self._get_session()
        to = (timeout or DEFAULT_TIMEOUTS).client_timeout()
        async with session.request(
            method, url, json=json, data=data, params=params, headers=headers, timeout=to
        ) as resp:
            body = await resp.read()
            return Response(resp.status, dict(resp.headers), body, str(resp.url))

    def stats(self) -> dict[str, Any]:
        return {"limits": {"limit": self.limits.limit, "per_host": self.limits.limit_per_host}}


def _close_at_shutdown(pool: HttpPool) -> None:
    """Close ``pool`` when the loop's async generators are shut down (end of asyncio.run)."""

    async def closer() -> AsyncIterator[None]:
        try:
            yield
        finally:
            await pool.aclose()

    agen = closer()
    pool._shutdown_agen = agen  # type: ignore[attr-defined]  # strong ref: the loop keeps a weak one

    # The first step registers the generator with the running loop, whose
    # shutdown_asyncgens() (called by asyncio.run) then runs its ``finally``.
    step = agen.__anext__()
    try:
        step.send(None)
    except StopIteration:
        pass
