"""Evaluation workers as Ray actors: one local Ray for the module (2 CPUs), a real
evaluation server on 127.0.0.1 whose actors lease its jobs; an actor killed with
``ray.kill`` mid-evaluation -> its job runs once more on the other actor, stored once."""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import local_ray
from test_cli_servers import free_port

from agentfleet.evaluation import EvalClient, EvalRequest, create_app
from agentfleet.evaluation.ray_workers import node_slots, ray_eval_workers
from agentfleet.evaluation.worker import EvalWorker, WorkerEvaluators
from agentfleet.http import HttpPool
from agentfleet.serving import serve_in_loop

try:
    import ray
except ImportError:  # pragma: no cover - depends on the install
    if os.environ.get("CI") == "true":
        raise
    ray = None  # type: ignore[assignment]


def test_node_slots() -> None:
    nodes = [
        {"NodeID": "a", "Alive": True, "Resources": {"CPU": 4.0}},
        {"NodeID": "b", "Alive": False, "Resources": {"CPU": 8.0}},
        {"NodeID": "c", "Alive": True, "Resources": {"CPU": 3.0}},
    ]
    assert node_slots(nodes, 2) == [("a", 0), ("a", 1), ("c", 0)]
    assert node_slots(nodes, 0) == [("a", k) for k in range(4)] + [("c", k) for k in range(3)]


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
