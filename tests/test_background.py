"""One background event loop per process: sync callers from many threads share its pool."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import served_in_thread

from agentfleet.evaluation import create_app, evaluate_info, evaluate_info_sync
from agentfleet.http import HttpPool
from agentfleet.http.background import BackgroundLoop, background_loop, run_sync, shutdown


async def _stats(url: str) -> dict[str, Any]:
    async with HttpPool() as pool:
        data = (await pool.request("GET", f"{url}/stats")).json()
        assert isinstance(data, dict)
        return data


def test_200_threads_of_sync_calls_share_the_pool_connections() -> None:
    """200 threads x 10 sequential evaluate_info_sync calls: the server sees at most the
    pool's per-host limit of connections (one asyncio.run per call would open 2,000)."""
    with served_in_thread(create_app(test_latency=0.01)) as url:
        limits = background_loop().pool().limits

        def worker(t: int) -> list[tuple[float, float, dict[str, Any]]]:
            return [
                evaluate_info_sync("Submitted", None, "c", f"t{t}_{i}", "test", "test", url)
                for i in range(10)
            ]

        with ThreadPoolExecutor(max_workers=200) as ex:
            results = [r for rs in ex.map(worker, range(200)) for r in rs]
        stats = asyncio.run(_stats(url))
    assert len(results) == 2000
    assert all(r[:2] == (1.0, 1.0) for r in results)
    assert stats["completed"] == 2000
    assert stats["connections_seen"] <= limits.limit_per_host + 1, stats  # +1: the stats call


def test_seed_pattern_asyncio_run_per_thread_still_works() -> None:
    with served_in_thread(create_app(test_latency=0.01)) as url:

        def one(i: int) -> tuple[float, float, dict[str, Any]]:
            return asyncio.run(
                evaluate_info(
                    exit_status="Submitted",
                    result=None,
                    container_id="container_123",
                    instance_id=f"task_{i}",
                    dataset_name="test",
                    split="test",
                    eval_server_url=url,
                )
            )

        with ThreadPoolExecutor(max_workers=8) as ex:
            results = list(ex.map(one, range(16)))
    assert all(r[:2] == (1.0, 1.0) for r in results)


def test_background_loop_runs_cancels_and_closes() -> None:
    loop = BackgroundLoop(name="test-background")
    try:
        assert loop.run(asyncio.sleep(0, "x")) == "x"
        with pytest.raises(ZeroDivisionError):
            loop.run(_divide())
        started = threading.Event()
        with pytest.raises(TimeoutError):
            loop.run(_wait_forever(started), timeout=0.2)  # the wait ends: the task too
        assert started.is_set()
        pool = loop.pool()
        assert pool is loop.pool() and pool.loop is loop.loop  # one pool for the loop
        # run() from the loop's own thread would deadlock: refused
        assert loop.run(_run_inside(loop)) == "refused"
    finally:
        loop.close()
    assert loop.closed and pool.closed
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="closed"):
        loop.run(coro)


async def test_run_sync_refuses_a_running_loop() -> None:
    with pytest.raises(RuntimeError, match="inside a running event loop"):
        run_sync(asyncio.sleep(0), what="x()")


def test_one_background_loop_per_process() -> None:
    assert background_loop() is background_loop()
    assert run_sync(_pid()) == os.getpid()


async def _divide() -> float:
    return 1 / 0


async def _wait_forever(started: threading.Event) -> None:
    started.set()
    await asyncio.Event().wait()


async def _run_inside(loop: BackgroundLoop) -> str:
    coro = asyncio.sleep(0)
    try:
        loop.run(coro)
    except RuntimeError:
        return "refused"
    return "ran"


async def _pid() -> int:
    return os.getpid()


def test_shutdown_closes_the_pool_and_the_next_call_starts_a_new_loop() -> None:
    loop = background_loop()
    pool = loop.pool()
    shutdown()
    assert loop.closed and pool.closed
    assert background_loop() is not loop and run_sync(_pid()) == os.getpid()


EXIT_SCRIPT = """
import http.server, threading
from agentfleet.http import HttpPool
from agentfleet.http.background import run_sync

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
threading.Thread(target=srv.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{srv.server_address[1]}/"

async def get():
    return (await HttpPool.for_loop().request("GET", url)).status

print(run_sync(get()))
"""


def test_process_exit_closes_the_background_pool_quietly(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", EXIT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "200", proc.stderr
    assert "Unclosed" not in proc.stderr and "Error" not in proc.stderr, proc.stderr
