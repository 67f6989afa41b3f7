"""HttpPool against real local servers: limits, reuse, queue time, loops, retries, metrics.

The test server is an aiohttp.web app running in its own thread and event loop, counting
server-side what the client did: accepted connections (distinct transports), requests in
flight at once, attempts per key.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from tenacity import RetryCallState
from tenacity.asyncio import AsyncRetrying

from agentfleet.http import (
    EVAL_TIMEOUTS,
    LLM_TIMEOUTS,
    NO_RETRY,
    PRESETS,
    HttpConnectionError,
    HttpError,
    HttpPool,
    HttpTimeoutError,
    PoolLimits,
    RetryPolicy,
    Timeouts,
    exec_timeouts,
    is_idempotent,
    parse_retry_after,
    preset_for_fleet,
    register_pool_metrics,
    render_prometheus,
    resolve_limits,
)
from agentfleet.http.metrics import METRIC_NAMES, live_pools
from agentfleet.http.retry import wait_retry_after_or_backoff

FAST = RetryPolicy(attempts=5, wait_min=0.01, wait_max=0.1, budget_s=10.0)


# -- test server -----------------------------------------------------------------------


class CountingServer:
    """aiohttp.web server in a background thread that counts what it sees."""

    def __init__(self) -> None:
        self.transports: set[asyncio.BaseTransport] = set()
        self.active = 0
        self.peak = 0
        self.requests = 0
        self.attempts: Counter[str] = Counter()
        self.work: Counter[str] = Counter()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return len(self.transports)

    def reset_counts(self) -> None:
        self.transports.clear()
        self.peak = self.active
        self.requests = 0
        self.attempts.clear()
        self.work.clear()

    # handlers
    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.transport is not None:
            self.transports.add(request.transport)
        self.requests += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        finally:
            self.active -= 1

    async def _fast(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _until(self, request: web.Request) -> web.Response:
        """Answers once ``n`` requests were in flight at once (or after 30 s)."""
        want, deadline = int(request.query["n"]), self.loop.time() + 30
        while self.peak < want and self.loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return web.json_response({"peak": self.peak})

    async def _sleep(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "0.5")))
        return web.json_response({"slept": True})

    async def _flaky(self, request: web.Request) -> web.Response:
        """First ``fail`` attempts answer ``status`` (+ Retry-After); then the work is done."""
        key = request.match_info["key"]
        self.attempts[key] += 1
        if self.attempts[key] <= int(request.query.get("fail", "2")):
            headers = {}
            if "retry_after" in request.query:
                headers["Retry-After"] = request.query["retry_after"]
            return web.Response(status=int(request.query.get("status", "503")), headers=headers)
        self.work[key] += 1
        return web.json_response({"done": self.work[key]})

    async def _reset(self, request: web.Request) -> web.Response:
        """First ``fail`` attempts: drop the connection without answering."""
        key = request.match_info["key"]
        self.attempts[key] += 1
        if self.attempts[key] <= int(request.query.get("fail", "1")):
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError
        self.work[key] += 1
        return web.json_response({"done": self.work[key]})

    # lifecycle
    async def _start(self) -> None:
        app = web.Application(middlewares=[self._count])
        app.router.add_get("/fast", self._fast)
        app.router.add_get("/sleep", self._sleep)
        app.router.add_get("/until", self._until)
        app.router.add_route("*", "/flaky/{key}", self._flaky)
        app.router.add_route("*", "/reset/{key}", self._reset)
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=75.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=2048)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]

    def start(self) -> CountingServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def server() -> Iterator[CountingServer]:
    srv = CountingServer().start()
    try:
        yield srv
    finally:
        srv.stop()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- presets and plain values -----------------------------------------------------------


def test_presets_and_fleet_advice() -> None:
    assert PRESETS["small"] == PoolLimits(100, 50)
    assert PRESETS["medium"] == PoolLimits(200, 100)
    assert PRESETS["large"] == PoolLimits(500, 200)
    assert preset_for_fleet(1) == preset_for_fleet(10) == PRESETS["small"]
    assert preset_for_fleet(11) == preset_for_fleet(50) == PRESETS["medium"]
    assert preset_for_fleet(51) == preset_for_fleet(1000) == PRESETS["large"]
    assert resolve_limits("medium") == PRESETS["medium"]
    assert resolve_limits(None) == PRESETS["small"]
    assert HttpPool("large").limits == PRESETS["large"]
    with pytest.raises(ValueError, match="unknown pool preset"):
        resolve_limits("huge")
    with pytest.raises(ValueError):
        HttpPool("huge")


def test_explicit_limits() -> None:
    assert resolve_limits("300/150") == PoolLimits(300, 150)
    assert resolve_limits(" Large ") == PRESETS["large"]
    assert HttpPool("20/10").limits == PoolLimits(20, 10)
    for bad in ("300/", "a/b", "300/0", "100/200", "0/0", "-5/1"):
        with pytest.raises(ValueError, match="pool"):
            resolve_limits(bad)
    with pytest.raises(ValueError, match="per-host"):
        resolve_limits(PoolLimits(10, 20))
    with pytest.raises(ValueError):
        HttpPool.configure_default("nope")


def test_timeouts_per_kind_of_call() -> None:
    assert (EVAL_TIMEOUTS.total, EVAL_TIMEOUTS.connect, EVAL_TIMEOUTS.sock_read) == (3600, 60, 300)
    assert LLM_TIMEOUTS.total is None and LLM_TIMEOUTS.sock_read
    assert exec_timeouts(60, margin=5).total == 65  # the caller resolves the default
    ex = exec_timeouts(120, margin=30)
    assert ex.total == 150
    ct = ex.client_timeout()
    assert isinstance(ct, aiohttp.ClientTimeout) and ct.total == 150


def test_idempotency_rules() -> None:
    for m in ("GET", "head", "PUT", "DELETE", "OPTIONS"):
        assert is_idempotent(m)
    assert not is_idempotent("POST")
    assert not is_idempotent("PATCH", {"X-Other": "1"})
    assert is_idempotent("POST", {"Idempotency-Key": "abc"})
    assert is_idempotent("POST", {"idempotency-key": "abc"})
    assert is_idempotent("POST", idempotent=True)
    assert not is_idempotent("GET", idempotent=False)
    assert not is_idempotent("POST", {"Idempotency-Key": "abc"}, idempotent=False)


def test_retry_after_parsing_and_cap() -> None:
    assert parse_retry_after("0") == 0
    assert parse_retry_after(" 7 ") == 7
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now) == pytest.approx(30)
    earlier = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0

    class Resp:
        status = 503
        headers = {"Retry-After": "30"}

    policy = RetryPolicy(attempts=3, wait_min=0.01, wait_max=0.1)
    state = RetryCallState(AsyncRetrying(), fn=None, args=(), kwargs={})
    state.set_result(Resp())
    assert wait_retry_after_or_backoff(policy)(state) == 0.1  # capped by wait_max
    Resp.headers = {}
    for _ in range(20):  # backoff with jitter, within [wait_min, wait_max]
        assert 0.01 <= wait_retry_after_or_backoff(policy)(state) <= 0.1


# -- limits and reuse -------------------------------------------------------------------


async def test_500_concurrent_respect_per_host_limit(server: CountingServer) -> None:
    async with HttpPool(PoolLimits(100, 50)) as pool:
        resps = await asyncio.gather(
            *(pool.request("GET", f"{server.url}/sleep", params={"s": "0.5"}) for _ in range(500))
        )
        stats = pool.stats()
    assert all(r.status == 200 for r in resps)
    assert server.requests == 500
    assert server.peak <= 50
    assert server.connections <= 50
    t = stats["targets"][f"127.0.0.1:{server.port}"]
    assert t["requests"] == 500 and t["in_flight"] == 0 and t["waiting"] == 0
    assert t["connections_created"] <= 50
    assert t["connections_reused"] >= 450
    assert t["queue_wait_s"]["max"] > 0.4  # most requests queued for our slot
    assert t["aiohttp_queued"] == 0  # ...and never in aiohttp's connector


async def test_large_per_host_limit_lets_requests_through(server: CountingServer) -> None:
    """With a limit of 600, 500 requests are all in flight at once: each is answered only
    once the server holds all 500 (a throttle would hold them to 30 s, and fewer at once)."""
    async with HttpPool(PoolLimits(600, 600)) as pool:
        resps = await asyncio.gather(
            *(pool.request("GET", f"{server.url}/until", params={"n": "500"}) for _ in range(500))
        )
    assert all(r.status == 200 for r in resps)
    assert server.peak == 500


async def test_agents_share_keepalive_connections(server: CountingServer) -> None:
    limits = PoolLimits(100, 50)
    async with HttpPool(limits) as pool:

        async def agent() -> int:
            ok = 0
            for _ in range(20):
                ok += (await pool.request("GET", f"{server.url}/fast")).status == 200
            return ok

        results = await asyncio.gather(*(agent() for _ in range(100)))
        stats = pool.stats()
        held = pool.open_connections()
    assert held is not None and 1 <= held <= limits.limit_per_host
    assert pool.open_connections() == 0  # closed
    assert sum(results) == 2000
    assert server.requests == 2000
    assert server.connections <= limits.limit_per_host <= limits.limit
    assert stats["totals"]["connections_reused"] > 0
    assert stats["totals"]["connections_created"] == server.connections
    assert stats["totals"]["requests"] == 2000
    assert stats["totals"]["aiohttp_queued"] == 0


async def test_queue_time_not_charged_to_timeout(server: CountingServer) -> None:
    async with HttpPool(PoolLimits(10, 2)) as pool:
        resps = await asyncio.gather(
            *(
                pool.request(
                    "GET", f"{server.url}/sleep", params={"s": "0.3"}, timeout=Timeouts(total=0.5)
                )
                for _ in range(6)
            )
        )
        stats = pool.stats()
    assert [r.status for r in resps] == [200] * 6
    assert server.peak <= 2
    assert stats["totals"]["queue_wait_s"]["max"] >= 0.25  # the last pair waited ~0.6 s


async def test_timeout_raises_http_timeout_error(server: CountingServer) -> None:
    async with HttpPool(retry=FAST) as pool:
        with pytest.raises(HttpTimeoutError) as info:
            await pool.request(
                "GET", f"{server.url}/sleep", params={"s": "0.6"}, timeout=Timeouts(total=0.2)
            )
        stats = pool.stats()
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, HttpError)
    assert server.url in str(info.value)
    assert stats["totals"]["retries"] == 0  # an expired budget is not retried


# -- loops, threads, ownership ----------------------------------------------------------


def test_pool_per_loop_in_threads(server: CountingServer) -> None:
    def worker(i: int) -> HttpPool:
        async def main() -> HttpPool:
            pool = HttpPool.for_loop()
            assert HttpPool.for_loop() is pool
            for _ in range(10):
                resp = await pool.request("GET", f"{server.url}/fast")
                assert resp.json() == {"ok": True}
            return pool

        return asyncio.run(main())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ThreadPoolExecutor(max_workers=8) as ex:
            pools = list(ex.map(worker, range(8)))
        gc.collect()
    assert len({id(p) for p in pools}) == 8
    assert all(p.closed for p in pools)
    assert server.requests == 80
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


async def test_pool_used_from_another_loop_raises(server: CountingServer) -> None:
    pool = HttpPool()
    try:
        assert (await pool.request("GET", f"{server.url}/fast")).status == 200
        assert pool.loop is asyncio.get_running_loop()

        async def elsewhere() -> None:
            with pytest.raises(RuntimeError, match="another event loop"):
                await pool.request("GET", f"{server.url}/fast")
            with pytest.raises(RuntimeError, match="another event loop"):
                await pool.aclose()

        await asyncio.to_thread(asyncio.run, elsewhere())
        assert not pool.closed
    finally:
        await pool.aclose()
    assert pool.closed
    with pytest.raises(RuntimeError, match="closed"):
        await pool.request("GET", f"{server.url}/fast")


async def test_for_loop_pool_is_shared_and_replaced_after_close(server: CountingServer) -> None:
    pool = HttpPool.for_loop()
    assert HttpPool.for_loop() is pool
    await pool.aclose()
    fresh = HttpPool.for_loop()
    assert fresh is not pool and not fresh.closed
    assert (await fresh.request("GET", f"{server.url}/fast")).ok


def test_for_loop_pool_closed_at_end_of_asyncio_run(
    server: CountingServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> HttpPool:
        pool = HttpPool.for_loop()
        await asyncio.gather(*(pool.request("GET", f"{server.url}/fast") for _ in range(20)))
        return pool  # deliberately not closed

    with caplog.at_level(logging.ERROR), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = asyncio.run(main())
        gc.collect()
    assert pool.closed
    assert not [w for w in caught if "Unclosed" in str(w.message)]
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert "Unclosed" not in caplog.text


def test_no_loop_or_pool_survives_asyncio_run(server: CountingServer) -> None:
    """for_loop() pools and their loops are freed once asyncio.run returns; closed pools
    drop out of the default Prometheus output."""
    import weakref

    from agentfleet.http import pool as pool_module

    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    pools: list[weakref.ref[HttpPool]] = []
    names: list[str] = []

    async def main() -> None:
        pool = HttpPool.for_loop()
        await asyncio.gather(*(pool.request("GET", f"{server.url}/fast") for _ in range(5)))
        loops.append(weakref.ref(asyncio.get_running_loop()))
        pools.append(weakref.ref(pool))
        names.append(pool.name)

    for _ in range(5):
        asyncio.run(main())
    gc.collect()
    assert [r() for r in loops] == [None] * 5
    assert [r() for r in pools] == [None] * 5
    assert len(pool_module._loop_pools) == 0
    assert not {p.name for p in live_pools(include_closed=True)} & set(names)

    async def closed_but_referenced() -> HttpPool:
        pool = HttpPool.for_loop()
        await pool.request("GET", f"{server.url}/fast")
        await pool.aclose()
        return pool

    kept = asyncio.run(closed_but_referenced())
    assert kept.closed and kept.loop is None  # its loop is gone, the pool only knew it weakly
    text = render_prometheus()
    assert f'pool="{kept.name}"' not in text
    assert not any(f'pool="{n}"' in text for n in names)
    assert f'pool="{kept.name}"' in render_prometheus(kept)  # asked for by name: still there


async def test_closed_pool_leaves_default_metrics(server: CountingServer) -> None:
    pool = HttpPool(name="short-lived")
    await pool.request("GET", f"{server.url}/fast")
    registry = CollectorRegistry()
    register_pool_metrics(registry)  # every open pool
    assert 'pool="short-lived"' in generate_latest(registry).decode()
    assert 'pool="short-lived"' in render_prometheus()
    await pool.aclose()
    assert 'pool="short-lived"' not in generate_latest(registry).decode()
    assert 'pool="short-lived"' not in render_prometheus()


async def test_response_headers_are_case_insensitive(server: CountingServer) -> None:
    async with HttpPool() as pool:
        resp = await pool.request("GET", f"{server.url}/fast")
    assert resp.headers["content-type"] == resp.headers["Content-Type"]
    assert resp.headers.get("CONTENT-TYPE", "").startswith("application/json")


async def test_long_polls_leave_slots_for_short_calls(server: CountingServer) -> None:
    """Long polls may hold all but a reserve of a host's slots: a short call does not
    wait for them, and the host never sees more than its per-host limit."""
    async with HttpPool(PoolLimits(20, 4)) as pool:
        assert pool.long_poll_slots() == 3
        polls = [
            asyncio.create_task(
                pool.request("GET", f"{server.url}/sleep", params={"s": "1"}, long_poll=True)
            )
            for _ in range(8)
        ]
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        short = await pool.request("GET", f"{server.url}/fast")
        short_s = time.monotonic() - t0
        assert short.ok and short_s < 0.5, short_s
        assert all(r.ok for r in await asyncio.gather(*polls))
    assert server.peak <= 4
    assert server.connections <= 4


def test_unclosed_explicit_pool_closed_at_end_of_asyncio_run(server: CountingServer) -> None:
    pool = HttpPool(PoolLimits(10, 5))

    async def main() -> None:
        assert (await pool.request("GET", f"{server.url}/fast")).ok  # never closed by us

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert pool.closed
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_file_descriptors_return_to_baseline(server: CountingServer) -> None:
    async def main() -> int:
        async with HttpPool(PoolLimits(50, 50)) as pool:
            sem = asyncio.Semaphore(200)

            async def one() -> int:
                async with sem:
                    return (await pool.request("GET", f"{server.url}/fast")).status

            statuses = await asyncio.gather(*(one() for _ in range(2000)))
        return sum(s == 200 for s in statuses)

    before = fd_count()
    assert asyncio.run(main()) == 2000
    deadline = time.monotonic() + 5
    while fd_count() > before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the server thread closes its side asynchronously
    assert abs(fd_count() - before) <= 2


# -- retries ----------------------------------------------------------------------------


async def test_retry_503_with_retry_after_on_idempotent_post(server: CountingServer) -> None:
    async with HttpPool(retry=FAST) as pool:
        resp = await pool.request(
            "POST",
            f"{server.url}/flaky/job1",
            params={"fail": "2", "status": "503", "retry_after": "0"},
            json={"x": 1},
            headers={"Idempotency-Key": "job1"},
        )
        stats = pool.stats()
    assert resp.status == 200 and resp.json() == {"done": 1}
    assert server.attempts["job1"] == 3
    assert server.work["job1"] == 1
    t = stats["targets"][f"127.0.0.1:{server.port}"]
    assert t["retries"] == 2 and t["requests"] == 3
    assert t["errors"] == {"http_503": 2}


async def test_retry_429_then_200(server: CountingServer) -> None:
    async with HttpPool(retry=FAST) as pool:
        resp = await pool.request(
            "GET", f"{server.url}/flaky/k429", params={"fail": "1", "status": "429"}
        )
    assert resp.status == 200 and resp.json() == {"done": 1}
    assert server.attempts["k429"] == 2
    assert server.work["k429"] == 1  # the work was done exactly once


async def test_retry_after_capped_by_wait_max(server: CountingServer) -> None:
    async with HttpPool(retry=FAST) as pool:
        t0 = time.monotonic()
        resp = await pool.request(
            "GET", f"{server.url}/flaky/kcap", params={"fail": "1", "retry_after": "30"}
        )
    assert resp.status == 200 and server.attempts["kcap"] == 2
    assert time.monotonic() - t0 < 10  # waited wait_max (0.1 s), not 30 s


async def test_retry_after_connection_reset(server: CountingServer) -> None:
    async with HttpPool(retry=FAST) as pool:
        resp = await pool.request(
            "POST", f"{server.url}/reset/r1", headers={"Idempotency-Key": "r1"}, data=b"payload"
        )
        stats = pool.stats()
    assert resp.status == 200
    assert server.attempts["r1"] == 2 and server.work["r1"] == 1
    t = stats["targets"][f"127.0.0.1:{server.port}"]
    assert t["retries"] == 1
    assert t["errors"] == {"ServerDisconnectedError": 1}


async def test_non_idempotent_post_is_not_retried(server: CountingServer) -> None:
    async with HttpPool(retry=FAST) as pool:
        resp = await pool.request(
            "POST", f"{server.url}/flaky/np", params={"fail": "2", "retry_after": "0"}
        )
        with pytest.raises(HttpConnectionError):
            await pool.request("POST", f"{server.url}/reset/np-reset")
        assert pool.stats()["totals"]["retries"] == 0
    assert resp.status == 503
    assert server.attempts["np"] == 1 and server.work["np"] == 0
    assert server.attempts["np-reset"] == 1


async def test_explicit_idempotent_flags(server: CountingServer) -> None:
    async with HttpPool(retry=FAST) as pool:
        r1 = await pool.request(
            "POST", f"{server.url}/flaky/yes", params={"fail": "1"}, idempotent=True
        )
        r2 = await pool.request(
            "GET", f"{server.url}/flaky/no", params={"fail": "1"}, idempotent=False
        )
        r3 = await pool.request(
            "GET", f"{server.url}/flaky/nr", params={"fail": "1"}, retry=NO_RETRY
        )
    assert (r1.status, r2.status, r3.status) == (200, 503, 503)
    assert server.attempts == Counter({"yes": 2, "no": 1, "nr": 1})


async def test_status_retries_exhausted_returns_last_response(server: CountingServer) -> None:
    policy = RetryPolicy(attempts=3, wait_min=0.01, wait_max=0.02)
    async with HttpPool(retry=policy) as pool:
        resp = await pool.request("GET", f"{server.url}/flaky/ex", params={"fail": "10"})
    assert resp.status == 503 and server.attempts["ex"] == 3
    with pytest.raises(HttpError, match="HTTP 503"):
        resp.raise_for_status()


async def test_retry_budget_stops_early(server: CountingServer) -> None:
    policy = RetryPolicy(attempts=10, wait_min=0.2, wait_max=0.2, budget_s=0.3)
    async with HttpPool(retry=policy) as pool:
        resp = await pool.request("GET", f"{server.url}/flaky/bud", params={"fail": "10"})
    assert resp.status == 503
    assert server.attempts["bud"] == 2  # a third attempt would start after 0.4 s > 0.3 s


async def test_connection_errors_exhausted_raise_http_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/nothing"
    policy = RetryPolicy(attempts=3, wait_min=0.01, wait_max=0.02)
    async with HttpPool(retry=policy) as pool:
        with pytest.raises(HttpConnectionError) as info:
            await pool.request("GET", url)
        stats = pool.stats()
    err = info.value
    assert isinstance(err, HttpError) and isinstance(err, aiohttp.ClientConnectionError)
    assert url in str(err) and "3 attempts" in str(err)
    assert isinstance(err.__cause__, aiohttp.ClientConnectionError)
    t = stats["targets"][url.split("/")[2]]
    assert t["retries"] == 2 and t["requests"] == 3
    assert t["errors"] == {"ClientConnectorError": 3}
    assert t["in_flight"] == 0 and t["connections_created"] == 0


# -- stats and Prometheus ---------------------------------------------------------------


async def test_stats_structure_and_prometheus(server: CountingServer) -> None:
    async with (
        HttpPool(PoolLimits(20, 10), name="fleet-a") as pool,
        HttpPool(PoolLimits(20, 10), name="fleet-b") as other,
    ):
        for _ in range(5):
            await pool.request("GET", f"{server.url}/fast")
        await pool.request("GET", f"{server.url}/fast", target="sandbox")
        await pool.request("GET", f"{server.url}/flaky/s", params={"fail": "1"}, retry=NO_RETRY)
        await other.request("GET", f"{server.url}/fast")
        stats = pool.stats()
        json.dumps(stats)  # JSON-serialisable
        assert stats["name"] == "fleet-a"
        assert stats["limits"] == {"limit": 20, "per_host": 10}
        assert stats["closed"] is False
        assert set(stats["targets"]) == {f"127.0.0.1:{server.port}", "sandbox"}
        tgt = stats["targets"][f"127.0.0.1:{server.port}"]
        for key in (
            "connections_created",
            "connections_reused",
            "requests",
            "in_flight",
            "waiting",
            "retries",
            "errors",
            "errors_total",
            "latency_s",
            "queue_wait_s",
        ):
            assert key in tgt and key in stats["totals"]
        assert tgt["requests"] == 6 and tgt["errors"] == {"http_503": 1}
        assert set(tgt["latency_s"]) == {"count", "mean", "p50", "p95", "max"}
        assert tgt["latency_s"]["count"] == 6
        assert 0 < tgt["latency_s"]["p50"] <= tgt["latency_s"]["p95"] <= tgt["latency_s"]["max"]
        assert stats["totals"]["requests"] == 7
        assert stats["totals"]["latency_s"]["count"] == 7

        text = render_prometheus(pool)
        for name in METRIC_NAMES:
            assert name in text
        assert 'agentfleet_http_requests_total{pool="fleet-a",target="sandbox"} 1.0' in text
        assert 'kind="http_503"' in text
        assert "fleet-b" not in text

        registry = CollectorRegistry()
        register_pool_metrics(registry, pool)
        register_pool_metrics(registry, other)  # same registry, second pool: no duplicates
        both = generate_latest(registry).decode()
        assert 'pool="fleet-a"' in both and 'pool="fleet-b"' in both
        assert both.count("# TYPE agentfleet_http_requests_total counter") == 1
        assert "agentfleet_http" not in generate_latest(REGISTRY).decode()
    assert pool.stats()["closed"] is True
