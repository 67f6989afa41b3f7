"""``evaluate_info``: the call from DESIGN.md, concurrency, threads, pooling, fds.

Against a real evaluation server on 127.0.0.1 (port 0), in this test's event loop.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agentfleet.evaluation import (
    EvalClient,
    EvalClientError,
    EvalRequest,
    EvalResult,
    create_app,
    evaluate_info,
    evaluate_info_sync,
)
from agentfleet.http import NO_RETRY, HttpError, HttpPool, PoolLimits, RetryPolicy
from agentfleet.serving import RunningServer, serve_in_loop


class SleepEvaluator:
    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.calls: Counter[str] = Counter()

    async def evaluate(self, req: EvalRequest) -> EvalResult:
        self.calls[req.instance_id] += 1
        await asyncio.sleep(self.delay)
        return EvalResult(reward=1.0, speedup=1.25, info={"instance_id": req.instance_id})


@asynccontextmanager
async def running(evaluator: Any = None, **kw: Any) -> AsyncIterator[RunningServer]:
    async with serve_in_loop(create_app(evaluator, **kw)) as srv:
        yield srv


async def stats(url: str) -> dict[str, Any]:
    async with HttpPool() as p:
        data = (await p.request("GET", f"{url}/stats")).json()
        assert isinstance(data, dict)
        return data


async def reset_stats(url: str) -> None:
    async with HttpPool() as p:
        await p.request("POST", f"{url}/stats/reset")


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_design_call_verbatim(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agentfleet.evaluation")
    async with running(SleepEvaluator(0.05)) as srv:
        reward, speedup, info = await evaluate_info(
            exit_status="Submitted",
            result=None,
            container_id="container_123",
            instance_id="task_1",
            dataset_name="test",
            split="test",
            eval_server_url=srv.url,
        )
        await HttpPool.for_loop().aclose()  # the loop's shared pool
    assert (reward, speedup) == (1.0, 1.25)
    assert info == {"instance_id": "task_1"}
    messages = [r.getMessage() for r in caplog.records if r.name == "agentfleet.evaluation"]
    assert "Starting evaluation task_1" in messages
    done = [m for m in messages if m.startswith("Evaluation completed task_1 ")]
    assert len(done) == 1
    seconds = done[0].rsplit(" ", 1)[1]
    assert float(seconds) >= 0.05 and len(seconds.split(".")[1]) == 2


# A fresh process: the import loads no aiohttp; the first call loads it in a thread.
FIRST_CALL = """
import asyncio, json, sys, threading
loads = []
def hook(event, args):
    if event == "import" and args[0] == "aiohttp":
        loads.append(threading.current_thread() is threading.main_thread())
sys.addaudithook(hook)
from agentfleet import evaluate_info
before = "aiohttp" in sys.modules
out = asyncio.run(evaluate_info("Submitted", "", None, "t1", "test", "test", sys.argv[1]))
print(json.dumps({"before": before, "loads_on_loop_thread": loads, "out": out[:2]}))
"""


async def test_the_first_call_loads_the_http_stack_off_the_loop() -> None:
    async with running(SleepEvaluator(0.01)) as srv:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", FIRST_CALL, srv.url, stdout=asyncio.subprocess.PIPE
        )
        stdout, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0
    seen = json.loads(stdout)
    assert seen == {"before": False, "loads_on_loop_thread": [False], "out": [1.0, 1.25]}


async def test_a_pool_module_already_imported_costs_no_thread_hop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the pool module is imported (here by this test process), a client's first call
    does not go through a thread to import it again: a burst of first calls pays no hop."""
    import agentfleet.evaluation.client as client_mod
    import agentfleet.http.pool  # noqa: F401

    hops: list[Any] = []
    to_thread = asyncio.to_thread

    async def counting_to_thread(fn: Any, *args: Any) -> Any:
        if fn is importlib.import_module:
            hops.append(args)
        return await to_thread(fn, *args)

    monkeypatch.setattr(client_mod, "_pool_loaded", False)
    monkeypatch.setattr(client_mod.asyncio, "to_thread", counting_to_thread)
    async with HttpPool() as pool:
        got = await asyncio.gather(*(EvalClient("http://x", pool)._ready_pool() for _ in range(5)))
    assert got == [pool] * 5 and hops == []
    assert client_mod._pool_loaded


async def test_an_unreachable_server_is_named_once_in_the_error() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with HttpPool(retry=NO_RETRY) as pool:
        client = EvalClient(url, pool, outage_s=0)
        with pytest.raises(EvalClientError) as caught:
            await client.submit(EvalRequest(exit_status="Submitted", result="", instance_id="t1"))
    message = caught.value.message
    assert message.count(url) == 1, message
    assert message.startswith(f"POST {url}/evaluations failed after 1 attempt: "), message


async def test_gather_runs_concurrently(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agentfleet.evaluation")
    async with running(test_latency=0.5) as srv, HttpPool() as pool:
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(
                evaluate_info(
                    "Submitted",
                    None,
                    "container_123",
                    f"task_{i}",
                    "test",
                    "test",
                    srv.url,
                    pool=pool,
                )
                for i in range(20)
            )
        )
        elapsed = time.monotonic() - t0
    assert len(results) == 20
    assert all(isinstance(r, tuple) and len(r) == 3 and r[0] == 1.0 for r in results)
    assert elapsed < 3.0  # 20 x 0.5 s one by one would take 10 s
    messages = [r.getMessage() for r in caplog.records]
    starts = [i for i, m in enumerate(messages) if m.startswith("Starting evaluation")]
    ends = [i for i, m in enumerate(messages) if m.startswith("Evaluation completed")]
    assert len(starts) == len(ends) == 20
    assert max(starts) < min(ends)  # every evaluation started before any finished


async def test_thread_workers_with_their_own_loops() -> None:
    async with running(test_latency=0.3) as srv:

        def one(i: int) -> tuple[float, float, dict[str, Any]]:
            return asyncio.run(
                evaluate_info(
                    exit_status="Submitted",
                    result=None,
                    container_id="container_123",
                    instance_id=f"task_{i}",
                    dataset_name="test",
                    split="test",
                    eval_server_url=srv.url,
                )
            )

        def one_sync(i: int) -> tuple[float, float, dict[str, Any]]:
            return evaluate_info_sync(
                "Submitted", None, "container_123", f"sync_{i}", "test", "test", srv.url
            )

        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as ex:
            results = await asyncio.gather(
                *(loop.run_in_executor(ex, one, i) for i in range(16)),
                *(loop.run_in_executor(ex, one_sync, i) for i in range(8)),
            )
        elapsed = time.monotonic() - t0
    assert len(results) == 24 and all(r[0] == 1.0 for r in results)
    assert elapsed < 6.0  # 3 rounds of 8 threads x 0.3 s, plus loop start-ups


async def test_sync_wrapper_refuses_a_running_loop() -> None:
    with pytest.raises(RuntimeError, match="await evaluate_info"):
        evaluate_info_sync("Submitted", None, None, "t", "d", "s", "http://127.0.0.1:9")


async def test_unknown_route_or_rejection_is_a_zero_tuple() -> None:
    async with running(SleepEvaluator()) as srv, HttpPool() as pool:
        out = await evaluate_info(
            "Submitted", None, "c", "", "test", "test", srv.url, pool=pool
        )  # empty instance id: refused before sending
        assert out[:2] == (0.0, 0.0) and out[2]["status_code"] == 422
        out = await evaluate_info(
            "Submitted", None, "c", "task_1", "test", "test", srv.url + "/nope", pool=pool
        )
        assert out[:2] == (0.0, 0.0)
        assert out[2]["status_code"] == 404 and out[2]["error"]


async def test_transport_failure_raises_eval_client_error() -> None:
    quick = RetryPolicy(attempts=2, wait_min=0.01, wait_max=0.02)
    async with HttpPool(retry=quick) as pool:
        for outage_s in (0.0, 0.3):  # after the pool's retries; then after riding the outage
            with pytest.raises(EvalClientError) as exc_info:
                await evaluate_info(
                    "Submitted", None, "c", "task_1", "test", "test", "http://127.0.0.1:9",
                    pool=pool, outage_s=outage_s,
                )  # fmt: skip
            assert isinstance(exc_info.value, HttpError)
            assert ("unreachable for" in str(exc_info.value)) is (outage_s > 0)
        with pytest.raises(EvalClientError):  # a health probe never rides
            await asyncio.wait_for(EvalClient("http://127.0.0.1:9", pool=pool).health(), 5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_call_rides_over_an_outage_of_the_server() -> None:
    """The server is down when the evaluation is submitted (restarting, redeployed): the
    call keeps trying past the pool's retries and gets its result once the server is up,
    evaluated once."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    ev = SleepEvaluator(0.05)
    quick = RetryPolicy(attempts=2, wait_min=0.01, wait_max=0.02)
    async with HttpPool(retry=quick) as pool:
        call = asyncio.create_task(
            evaluate_info("Submitted", "", None, "t1", "test", "test", url, pool=pool, outage_s=60)
        )
        await asyncio.sleep(1.5)  # the pool's retries are long spent
        assert not call.done()
        async with serve_in_loop(create_app(ev), port=port):
            reward, speedup, _ = await asyncio.wait_for(call, 30)
    assert (reward, speedup) == (1.0, 1.25) and ev.calls["t1"] == 1


async def test_overall_timeout_raises() -> None:
    t0 = time.monotonic()
    async with running(test_latency=5.0) as srv, HttpPool() as pool:
        with pytest.raises(EvalClientError, match="timed out"):
            await evaluate_info(
                "Submitted", None, "c", "task_1", "test", "test", srv.url, pool=pool, timeout=0.3
            )
        assert time.monotonic() - t0 < 2.0
    # The abandoned long poll ended with its client: the server stopped at once.
    assert time.monotonic() - t0 < 3.0


async def test_eval_client_api() -> None:
    ev = SleepEvaluator(0.05)
    async with running(ev) as srv, HttpPool() as pool:
        client = EvalClient(srv.url, pool=pool)
        assert (await client.health())["status"] == "ok"
        req = EvalRequest(exit_status="Submitted", result="p", instance_id="task_7")
        job_id = await client.submit(req, idempotency_key="fixed")
        assert await client.submit(req, idempotency_key="fixed") == job_id
        status = await client.status(job_id, wait=5)
        assert status["status"] == "done" and status["reward"] == 1.0
        res = await client.evaluate(req, idempotency_key="fixed")
        assert res == EvalResult(reward=1.0, speedup=1.25, info={"instance_id": "task_7"})
    assert ev.calls["task_7"] == 1


@asynccontextmanager
async def server_process(test_latency: float) -> AsyncIterator[str]:
    """``agentfleet serve-eval`` in test mode, in its own process (its own core)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("agentfleet")),
        "serve-eval",
        "--port",
        str(port),
        "--test-latency",
        str(test_latency),
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with HttpPool() as probe:
            for _ in range(300):
                try:
                    if (await probe.request("GET", f"{url}/healthz", retry=NO_RETRY)).ok:
                        break
                except HttpError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("serve-eval never became healthy")
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_500_concurrent_share_a_small_pool() -> None:
    """500 agents on one loop, 2 s evaluations: they overlap; at most 50 sockets."""
    async with server_process(test_latency=2.0) as url:
        await reset_stats(url)
        async with HttpPool(PoolLimits(100, 50)) as pool:
            results = await asyncio.gather(
                *(
                    evaluate_info(
                        "Submitted",
                        None,
                        "container_123",
                        f"task_{i}",
                        "test",
                        "test",
                        url,
                        pool=pool,
                    )
                    for i in range(500)
                )
            )
        s = await stats(url)
    assert all(r[0] == 1.0 for r in results)
    assert s["completed"] == 500
    assert s["peak_in_flight"] >= 400, s
    assert s["connections_seen"] <= 50 + 1, s  # +1: the stats call's own connection


async def _agents(url: str, pool: HttpPool, n_agents: int, per_agent: int) -> list[Any]:
    async def agent(a: int) -> list[Any]:
        return [
            await evaluate_info(
                "Submitted", None, f"c{a}", f"task_{a}_{k}", "test", "test", url, pool=pool
            )
            for k in range(per_agent)
        ]

    per = await asyncio.gather(*(agent(a) for a in range(n_agents)))
    return [r for rs in per for r in rs]


async def test_sequential_calls_reuse_connections() -> None:
    """20 agents x 10 sequential evaluations: connections stay at the pool's size."""
    async with running(test_latency=0.01) as srv:
        async with HttpPool(PoolLimits(100, 50)) as pool:
            results = await _agents(srv.url, pool, 20, 10)
        s = await stats(srv.url)
    assert len(results) == 200 and all(r[0] == 1.0 for r in results)
    assert s["connections_seen"] <= 20 + 1, s


@pytest.mark.slow
async def test_2000_evaluations_connections_and_fds_stay_flat() -> None:
    """100 agents x 20 sequential evaluations: <= 50 connections (the per-host limit),
    not 2000; every fd opened along the way is closed once the pool is."""
    async with running(test_latency=0.01) as srv:
        await reset_stats(srv.url)
        await asyncio.sleep(0.2)
        start = await asyncio.to_thread(fd_count)
        async with HttpPool(PoolLimits(100, 50)) as pool:
            results = await _agents(srv.url, pool, 100, 20)
            s = await stats(srv.url)
        assert len(results) == 2000 and all(r[0] == 1.0 for r in results)
        assert s["completed"] == 2000
        assert s["connections_seen"] <= 50 + 1, s  # per-host limit, +1: the stats call
        end = await asyncio.to_thread(fd_count)
        deadline = time.monotonic() + 5
        while abs(end - start) > 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # the server closes its side once it sees EOF
            end = await asyncio.to_thread(fd_count)
        assert abs(end - start) <= 3, (start, end)
