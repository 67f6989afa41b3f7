"""Evaluation workers as Ray actors: one local Ray for the module (2 CPUs), a real
evaluation server on 127.0.0.1 whose actors lease its jobs; an actor killed with
``ray.kill`` mid-evaluation -> its job runs once more on the other actor, stored once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import local_ray
from test_cli_servers import free_port

from agentfleet.evaluation import EvalClient, EvalRequest, create_app
from agentfleet.evaluation.ray_workers import (
    RayRoomError,
    free_cpus,
    node_slots,
    ray_eval_workers,
)
from agentfleet.evaluation.worker import EvalWorker, WorkerEvaluators
from agentfleet.http import HttpPool
from agentfleet.serving import serve_in_loop

try:
    import ray
except ImportError:  # pragma: no cover - depends on the install
    if os.environ.get("CI") == "true":
        raise
    ray = None  # type: ignore[assignment]

pytestmark = pytest.mark.xdist_group("ray")  # one local Ray at a time (see test_ray_backend)


def test_node_slots() -> None:
    nodes = [
        {"NodeID": "a", "Alive": True, "Resources": {"CPU": 4.0}},
        {"NodeID": "b", "Alive": False, "Resources": {"CPU": 8.0}},
        {"NodeID": "c", "Alive": True, "Resources": {"CPU": 3.0}},
    ]
    assert node_slots(nodes, 2) == [("a", 0), ("a", 1), ("c", 0)]
    assert node_slots(nodes, 0) == [("a", k) for k in range(4)] + [("c", k) for k in range(3)]
    # by the CPUs free: the blocks held CPUs cover are skipped, the rest keep their number
    free = {"a": 1.5, "b": 8.0, "c": 3.0}
    assert node_slots(nodes, 1, free) == [("a", 3), ("c", 0), ("c", 1), ("c", 2)]
    assert node_slots(nodes, 2, free) == [("c", 0)]
    assert node_slots(nodes, 2, {"a": 4.0}) == [("a", 0), ("a", 1)]  # c: not live


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    with local_ray("agentfleet-eval-tests"):
        yield


def req(key: str) -> EvalRequest:
    return EvalRequest(exit_status="Submitted", result="", instance_id="t1", idempotency_key=key)


def two_cpus() -> bool:
    return len(os.sched_getaffinity(0)) >= 2


async def test_ray_actors_lease_the_server_jobs(ray_session: None, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    actors = functools.partial(
        ray_eval_workers, "auto", server_url=url, workers=2, cores_per_worker=1,
        test_latency=0.3,
    )  # fmt: skip
    app = create_app(
        db_path=tmp_path / "jobs.db", workers=0, test_latency=0.3, remote_workers=actors
    )
    async with serve_in_loop(app, port=port), HttpPool() as pool:
        client = EvalClient(url, pool=pool)
        results = await asyncio.gather(
            *(client.evaluate(req(f"k{i}"), timeout=120) for i in range(4))
        )
        health = await client.health()
    assert [r.reward for r in results] == [1.0] * 4
    remote = [w for w in health["worker_slots"] if w["remote"]]
    assert len(remote) == 2, health
    if two_cpus():  # one actor per CPU set
        assert sorted(w["cpus"] for w in remote) == sorted(
            str(c) for c in sorted(os.sched_getaffinity(0))[:2]
        )


async def test_a_killed_actor_job_runs_once_more(ray_session: None, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = create_app(db_path=tmp_path / "jobs.db", workers=0, test_latency=3, lease_ttl_s=1.5)
    async with (
        serve_in_loop(app, port=port),
        HttpPool() as pool,
        ray_eval_workers("auto", server_url=url, workers=2, test_latency=3) as actors,
    ):
        client = EvalClient(url, pool=pool)
        job_id = await client.submit(req("kill-actor"))
        busy: list[dict[str, Any]] = []
        async with asyncio.timeout(60):
            while not busy:
                await asyncio.sleep(0.05)
                health = await client.health()
                busy = [w for w in health["worker_slots"] if w["job_id"] == job_id]
        victim = busy[0]["worker"]
        await asyncio.to_thread(ray.kill, actors.handles[victim])
        done = await client.status(job_id, wait=60)
        if done["status"] != "done":
            done = await client.status(job_id, wait=60)
        metrics = (await pool.request("GET", f"{url}/metrics")).text()
    assert done["status"] == "done" and done["attempts"] == 2 and done["reward"] == 1.0
    assert "agentfleet_eval_leases_expired_total 1.0" in metrics
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        rows = conn.execute("SELECT status, attempts, result FROM jobs").fetchall()
    assert len(rows) == 1 and rows[0][:2] == ("done", 2) and rows[0][2] is not None


async def test_a_stopped_actor_hands_its_job_back(ray_session: None, tmp_path: Path) -> None:
    """The actors stopped gracefully (``ray.cancel``, as the server's shutdown does) with a
    job mid-evaluation and a lease TTL far longer than the test: the job is queued again at
    once, that start not counted, and the next worker finishes it; one stored result."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = create_app(db_path=tmp_path / "jobs.db", workers=0, test_latency=60, lease_ttl_s=600)
    async with serve_in_loop(app, port=port), HttpPool() as pool:
        client = EvalClient(url, pool=pool)
        job_id = await client.submit(req("stop-actor"))
        async with ray_eval_workers("auto", server_url=url, workers=1, test_latency=60):
            async with asyncio.timeout(60):
                while (await client.status(job_id))["status"] != "running":  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        back = await client.status(job_id)
        assert (back["status"], back["attempts"]) == ("queued", 0), back
        rescuer = EvalWorker(url, WorkerEvaluators(test_latency=0.1), pool=pool, wait_s=2)
        async with asyncio.timeout(60):
            assert await rescuer.run(max_jobs=1) == 1
        done = await client.status(job_id, wait=30)
        metrics = (await pool.request("GET", f"{url}/metrics")).text()
    assert done["status"] == "done" and done["attempts"] == 1
    assert "agentfleet_eval_leases_released_total 1.0" in metrics
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        rows = conn.execute("SELECT status, attempts, result FROM jobs").fetchall()
    assert len(rows) == 1 and rows[0][:2] == ("done", 1) and rows[0][2] is not None


async def hold_cpu() -> Any:
    """Another user of the cluster: an actor holding 1 CPU, placed."""

    class Holder:  # local: pickled by value (Ray's workers cannot import this module)
        def ping(self) -> int:
            return 1

    handle = ray.remote(num_cpus=1)(Holder).remote()
    await asyncio.to_thread(ray.get, handle.ping.remote(), timeout=60)
    return handle


async def test_actors_are_placed_by_the_cpus_free(ray_session: None, tmp_path: Path) -> None:
    """On the 2-CPU local Ray with 1 CPU held by another actor there is room for one
    evaluation worker only: asking for 2 is a clear error naming what is free (no actor
    left pending), the default places 1, on the node's second CPU block, and it evaluates;
    with both CPUs held, no room at all is an error too."""
    first = await hold_cpu()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        async with asyncio.timeout(60):  # Ray frees the last test's CPUs with a lag
            while sum(free_cpus().values()) != 1.0:  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0.1)
        with pytest.raises(RayRoomError, match=r"do not fit.*room for 1.*1 of 2 CPUs free"):
            async with ray_eval_workers("auto", server_url=url, workers=2):
                pass
        app = create_app(db_path=tmp_path / "jobs.db", workers=0, test_latency=0.1)
        async with (
            serve_in_loop(app, port=port),
            HttpPool() as pool,
            ray_eval_workers("auto", server_url=url, test_latency=0.1) as actors,
        ):
            [handle] = actors.handles.values()
            where = await asyncio.to_thread(ray.get, handle.where.remote(), timeout=60)
            res = await EvalClient(url, pool=pool).evaluate(req("free"), timeout=120)
        assert res.reward == 1.0
        if two_cpus():  # slot 1: the node's second CPU, not the first block again
            assert where["cpus"] == (sorted(os.sched_getaffinity(0))[1],)
        second = await hold_cpu()
        with pytest.raises(RayRoomError, match=r"no CPU free.*0 of 2 CPUs free"):
            async with ray_eval_workers("auto", server_url=url):
                pass
        ray.kill(second)
    finally:
        ray.kill(first)


async def test_no_cpu_free_is_one_error_line_from_the_clis(
    ray_session: None, tmp_path: Path
) -> None:
    """``agentfleet run --backend ray`` and ``serve-eval --ray-address`` on a cluster whose
    CPUs are all held: exit 2 with one ``error:`` line, no traceback, no run folder, no
    store, no server left listening (real CLIs in subprocesses, on this module's Ray)."""
    held = [await hold_cpu(), await hold_cpu()]
    address = ray.get_runtime_context().gcs_address
    port = free_port()
    try:
        run = await cli(
            "run", "--backend", "ray", "--ray-address", address, "--task", "sku-diff",
            "--run-dir", str(tmp_path / "run"), "--sandbox-root", str(tmp_path / "sb"),
            "--progress", "none",
        )  # fmt: skip
        serve = await cli(
            "serve-eval", "--ray-address", address, "--port", str(port),
            "--test-latency", "0.1", "--db", str(tmp_path / "jobs.db"),
        )  # fmt: skip
    finally:
        for handle in held:
            ray.kill(handle)
    for code, stderr in (run, serve):
        assert code == 2, stderr
        assert "Traceback" not in stderr, stderr
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "no CPU free" in errors[0], stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "sb").exists()
    assert not (tmp_path / "jobs.db").exists()
    with pytest.raises(OSError):  # nothing listens on the server's port
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


async def start_cli(*args: str) -> asyncio.subprocess.Process:
    """``agentfleet ARGS`` started in a subprocess (stderr piped)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from agentfleet.cli import app; app()", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "300"},
    )  # fmt: skip


async def finish(proc: asyncio.subprocess.Process, timeout: float) -> tuple[int, str]:
    """Its exit code and stderr once it ends; killed if it runs past ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            _, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, stderr.decode()


async def cli(*args: str) -> tuple[int, str]:
    """``agentfleet ARGS`` in a subprocess (bounded): its exit code and stderr."""
    return await finish(await start_cli(*args), 180)


@pytest.mark.skipif(not two_cpus(), reason="needs 2 CPUs")
async def test_serve_eval_sigterm_hands_the_ray_jobs_back(
    ray_session: None, tmp_path: Path
) -> None:
    """SIGTERM to ``serve-eval --ray-address`` with a job mid-evaluation on an actor: the
    actors stop while the server still listens, so the lease comes back before the store
    closes: exit 143 and the job stored queued, its start not counted, for the next start."""
    address = ray.get_runtime_context().gcs_address
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = tmp_path / "jobs.db"
    proc = await start_cli(
        "serve-eval", "--ray-address", address, "--ray-workers", "1", "--port", str(port),
        "--test-latency", "60", "--lease-ttl", "600", "--db", str(db),
    )  # fmt: skip
    job_id: str | None = None
    try:
        async with HttpPool() as pool, asyncio.timeout(90):
            client = EvalClient(url, pool=pool)
            while job_id is None and proc.returncode is None:
                try:
                    job_id = await client.submit(req("serve-stop"))
                except Exception:  # not listening yet
                    await asyncio.sleep(0.2)
            while job_id and (await client.status(job_id))["status"] != "running":  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()  # the signal under test; the clean-up if the polling failed
        code, stderr = await finish(proc, 60)
    assert job_id is not None, f"serve-eval ended first ({code}):\n{stderr[-3000:]}"
    assert code == 143, stderr[-3000:]
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT status, attempts FROM jobs").fetchall()
    assert rows == [("queued", 0)], stderr[-3000:]
