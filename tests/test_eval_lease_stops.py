"""A remote worker stopped between its evaluations: while its ask for a lease is in flight,
or while it posts a result. No job may wait for a lease's expiry after a graceful stop.

A real evaluation server on 127.0.0.1 (port 0, lease TTL far longer than the tests), a
real :class:`EvalWorker`, and between them a real HTTP proxy that holds one answer or one
request (as a slow network does), so that the stop lands exactly there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from test_eval_leases import TOKEN, post, request, server, stored_rows, wait_for

from agentfleet.evaluation import EvalClient
from agentfleet.evaluation.worker import EvalWorker, WorkerEvaluators
from agentfleet.http import HttpPool


class HoldingProxy:
    """Forwards every request to ``upstream``; the first one whose path ends with
    ``path_end`` is held before it goes upstream (``hold="request"``) or before its answer
    comes back (``hold="response"``): ``arrived`` is set then, and it waits for ``go``."""

    def __init__(self, upstream: str, path_end: str, hold: str) -> None:
        self.upstream, self.path_end, self.hold = upstream, path_end, hold
        self.arrived, self.go = asyncio.Event(), asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        held = request.path.endswith(self.path_end) and not self.arrived.is_set()
        if held and self.hold == "request":
            self.arrived.set()
            await self.go.wait()
        headers = {k: v for k, v in request.headers.items() if k in ("Authorization",)}
        headers["Content-Type"] = request.headers.get("Content-Type", "application/json")
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, self.upstream + request.path_qs, data=body, headers=headers
            ) as up,
        ):
            data, status = await up.read(), up.status
            ctype = up.headers.get("Content-Type")
        if held and self.hold == "response":
            self.arrived.set()
            await self.go.wait()
        return web.Response(body=data, status=status, headers={"Content-Type": ctype or ""})


@asynccontextmanager
async def holding_proxy(upstream: str, path_end: str, hold: str) -> AsyncIterator[HoldingProxy]:
    proxy = HoldingProxy(upstream, path_end, hold)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    proxy.url = f"http://{host}:{port}"
    try:
        yield proxy
    finally:
        proxy.go.set()
        await runner.cleanup()


async def stopped(task: asyncio.Task[Any]) -> None:
    task.cancel()
    async with asyncio.timeout(30):
        await asyncio.gather(task, return_exceptions=True)


async def test_a_worker_stopped_while_its_lease_answer_is_in_flight_hands_it_back(
    tmp_path: Path,
) -> None:
    """The server granted the lease, its answer is on the way, the worker is stopped: the
    worker releases the lease it named in its ask (never read), so the job is queued again
    at once, that start not counted."""
    async with server(tmp_path, ttl=600) as srv, HttpPool() as pool:
        client = EvalClient(srv.url, pool=pool, token=TOKEN)
        job_id = await client.submit(request("in-flight"))
        async with holding_proxy(srv.url, "/workers/lease", "response") as proxy:
            worker = EvalWorker(
                proxy.url, WorkerEvaluators(), token=TOKEN, name="w", pool=pool, wait_s=5
            )
            runner = asyncio.create_task(worker.run())
            async with asyncio.timeout(30):
                await proxy.arrived.wait()
            assert (await client.status(job_id))["status"] == "running"  # granted
            await stopped(runner)
        back = await client.status(job_id)
        assert (back["status"], back["attempts"]) == ("queued", 0), back
        assert worker.released == 1
        again = (await post(pool, f"{srv.url}/workers/lease", {"worker": "b", "wait": 5})).json()
        assert again["job_id"] == job_id and again["attempt"] == 1


async def test_a_lease_id_released_before_its_grant_is_never_granted(tmp_path: Path) -> None:
    """A raw client asks for a lease under its own id and goes away; its release reaches
    the server before any job does (and before the server sees the ask is gone: behind a
    proxy it never does). The job that comes next is not granted to that dead ask (204),
    but to the next worker, at once."""
    async with server(tmp_path, ttl=600) as srv, HttpPool() as pool:
        client = EvalClient(srv.url, pool=pool, token=TOKEN)
        lease_id = "gone-worker-lease-0001"
        ask = {"worker": "gone", "wait": 30, "lease_id": lease_id}
        dead = asyncio.create_task(post(pool, f"{srv.url}/workers/lease", ask))

        async def asking() -> bool:
            slots = (await client.health())["worker_slots"]
            return dead.done() or any(w["worker"] == "gone" for w in slots)

        await wait_for(asking)
        assert not dead.done(), (await dead).status
        rel = await post(pool, f"{srv.url}/workers/leases/{lease_id}/release")
        assert rel.status == 410  # not granted: nothing to hand back, and never will be
        job_id = await client.submit(request("after-release"))
        async with asyncio.timeout(30):
            assert (await dead).status == 204
        got = await post(pool, f"{srv.url}/workers/lease", {"worker": "b", "wait": 5})
        assert got.status == 200 and got.json()["job_id"] == job_id
        other = await client.submit(request("not-for-the-dead"))
        reuse = await post(pool, f"{srv.url}/workers/lease", {**ask, "wait": 1})
        assert reuse.status == 204  # a retired id is never granted
        assert (await client.status(other))["status"] == "queued"
        bad = await post(pool, f"{srv.url}/workers/lease", {**ask, "lease_id": "a/b"})
        assert bad.status == 422


async def test_a_worker_stopped_while_it_posts_a_result_stores_it_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The result POST is on its way when the worker is stopped: the worker waits for the
    server's answer before it stops, so the result is stored once and the job is done (no
    lease left to lapse)."""
    caplog.set_level(logging.INFO, logger="agentfleet.evaluation.worker")
    async with server(tmp_path, ttl=600, latency=0.05) as srv, HttpPool() as pool:
        client = EvalClient(srv.url, pool=pool, token=TOKEN)
        job_id = await client.submit(request("posting"))
        async with holding_proxy(srv.url, "/result", "request") as proxy:
            worker = EvalWorker(
                proxy.url, WorkerEvaluators(), token=TOKEN, name="w", pool=pool, wait_s=5
            )
            runner = asyncio.create_task(worker.run())
            async with asyncio.timeout(30):
                await proxy.arrived.wait()
            runner.cancel()

            def reacted() -> bool:
                said = (r.getMessage() for r in caplog.records)
                return runner.done() or any("posting the result" in m for m in said)

            async with asyncio.timeout(30):
                while not reacted():  # noqa: ASYNC110 - a log record: no event to wait on
                    await asyncio.sleep(0.02)
            assert not runner.done(), "the worker stopped without posting the result it had"
            proxy.go.set()
            async with asyncio.timeout(30):
                await asyncio.wait([runner])
        done = await client.status(job_id)
    assert runner.cancelled()
    assert (done["status"], done["attempts"], done["reward"]) == ("done", 1, 1.0), done
    assert worker.done == 1 and worker.released == 0
    [(_, st, attempts, result, _)] = stored_rows(tmp_path / "jobs.db")
    assert (st, attempts) == ("done", 1) and result is not None
