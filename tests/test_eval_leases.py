"""Remote evaluation workers: the lease protocol, eval-worker processes, expiry and refusal.

Real servers on 127.0.0.1 (port 0), real ``agentfleet eval-worker`` subprocesses (SIGKILL
mid-evaluation), the real evaluator for one perf-lite task. Ray actors: test_eval_ray.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agentfleet.evaluation import EvalClient, EvalRequest, create_app
from agentfleet.evaluation.pinning import parse_cpus
from agentfleet.evaluation.store import JobStore
from agentfleet.evaluation.worker import EvalWorker, WorkerEvaluators
from agentfleet.http import NO_RETRY, HttpPool
from agentfleet.serving import RunningServer, serve_in_loop
from agentfleet.tasks import load_dataset

TOKEN = "lease-test-token"


def request(key: str, instance: str = "t1", patch: str = "") -> EvalRequest:
    return EvalRequest(
        exit_status="Submitted", result=patch, instance_id=instance, idempotency_key=key
    )


@asynccontextmanager
async def server(
    tmp_path: Path, *, latency: float = 0.2, ttl: float = 1.5, **kw: Any
) -> AsyncIterator[RunningServer]:
    app = create_app(
        db_path=tmp_path / "jobs.db",
        workers=0,
        test_latency=latency,
        token=TOKEN,
        lease_ttl_s=ttl,
        **kw,
    )
    async with serve_in_loop(app) as srv:
        yield srv


async def post(pool: HttpPool, url: str, body: dict[str, Any] | None = None, **kw: Any) -> Any:
    return await pool.request(
        "POST",
        url,
        json=body if body is not None else {},
        headers={"Authorization": f"Bearer {TOKEN}"},
        retry=NO_RETRY,
        **kw,
    )


def stored_rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id, status, attempts, result, lease FROM jobs").fetchall()


async def wait_for(cond: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await cond():  # noqa: ASYNC110 - polls a server: no event to wait on
            await asyncio.sleep(0.05)


def test_parse_cpus() -> None:
    assert parse_cpus("0-3,6") == (0, 1, 2, 3, 6)
    assert parse_cpus("1") == (1,)
    for bad in ("", "a", "3-1", "1-", "-1"):
        with pytest.raises(ValueError):
            parse_cpus(bad)


async def test_a_remote_worker_runs_the_queue(tmp_path: Path) -> None:
    async with server(tmp_path) as srv, HttpPool() as pool:
        client = EvalClient(srv.url, pool=pool, token=TOKEN)
        worker = EvalWorker(
            srv.url, WorkerEvaluators(), token=TOKEN, name="w1", cpus=None, pool=pool, wait_s=2
        )
        runner = asyncio.create_task(worker.run())
        try:
            results = await asyncio.gather(*(client.evaluate(request(f"k{i}")) for i in range(3)))
            health = await client.health()
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
    assert [r.reward for r in results] == [1.0, 1.0, 1.0]
    assert worker.done == 3 and worker.refused == 0
    assert any(w["worker"] == "w1" and w["remote"] for w in health["worker_slots"])
    rows = stored_rows(tmp_path / "jobs.db")
    assert [(r[1], r[2]) for r in rows] == [("done", 1)] * 3


async def test_an_expired_lease_is_requeued_and_its_late_result_refused(tmp_path: Path) -> None:
    async with server(tmp_path, ttl=1.0) as srv, HttpPool() as pool:
        client = EvalClient(srv.url, pool=pool, token=TOKEN)
        job_id = await client.submit(request("late"))
        ask = {"worker": "slow", "node": "n1", "cpus": "0", "wait": 5}
        first = (await post(pool, f"{srv.url}/workers/lease", ask)).json()
        assert first["job_id"] == job_id and first["attempt"] == 1
        assert first["request"]["instance_id"] == "t1" and first["evaluator"]["test_latency"]
        beat = await post(pool, f"{srv.url}/workers/leases/{first['lease_id']}/heartbeat")
        assert beat.status == 200
        # no more heartbeats: the lease lapses and the job is leased again
        second_resp = await post(pool, f"{srv.url}/workers/lease", {**ask, "worker": "b"})
        second = second_resp.json()
        assert second["job_id"] == job_id and second["attempt"] == 2
        late = {"status": "done", "reward": 0.5, "speedup": 9.0, "elapsed_s": 1.0}
        refused = await post(pool, f"{srv.url}/workers/leases/{first['lease_id']}/result", late)
        assert refused.status == 409 and "expired" in refused.json()["error"]
        gone = await post(pool, f"{srv.url}/workers/leases/{first['lease_id']}/heartbeat")
        assert gone.status == 410
        ok = {"status": "done", "reward": 1.0, "speedup": 1.25, "info": {"by": "b"}}
        stored = await post(pool, f"{srv.url}/workers/leases/{second['lease_id']}/result", ok)
        assert stored.status == 200 and stored.json() == {"stored": True}
        again = await post(pool, f"{srv.url}/workers/leases/{second['lease_id']}/result", ok)
        assert again.status == 409  # a result lands once
        status = await client.status(job_id)
        metrics = (await pool.request("GET", f"{srv.url}/metrics", headers=auth())).text()
    assert status["status"] == "done" and status["speedup"] == 1.25 and status["attempts"] == 2
    assert status["info"] == {"by": "b", "worker": {"name": "b", "node": "n1", "cpus": "0"}}
    assert "agentfleet_eval_leases_expired_total 1.0" in metrics
    assert "agentfleet_eval_results_refused_total 2.0" in metrics
    assert 'agentfleet_eval_worker_busy{cpus="0",worker="slow"} 0.0' in metrics
    [(_, st, attempts, result, lease)] = stored_rows(tmp_path / "jobs.db")
    assert (st, attempts, lease) == ("done", 2, second["lease_id"])
    assert '"speedup": 1.25' in result


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


async def test_lease_routes_refuse_bad_input(tmp_path: Path) -> None:
    async with server(tmp_path) as srv, HttpPool() as pool:
        url = srv.url
        no_token = await pool.request("POST", f"{url}/workers/lease", json={"worker": "x"})
        assert no_token.status == 401
        assert (await post(pool, f"{url}/workers/lease", {"worker": ""})).status == 422
        assert (await post(pool, f"{url}/workers/lease", {"worker": "x", "wait": 99})).status == 422
        assert (await post(pool, f"{url}/workers/lease", {"worker": "x", "bogus": 1})).status == 422
        empty = await post(pool, f"{url}/workers/lease", {"worker": "x", "wait": 0})
        assert empty.status == 204
        unknown = "n" * 32  # well formed, never granted
        assert (await post(pool, f"{url}/workers/leases/{unknown}/heartbeat")).status == 410
        assert (await post(pool, f"{url}/workers/leases/nope/heartbeat")).status == 422
        bad = {"status": "maybe", "reward": 1, "speedup": 1}
        assert (await post(pool, f"{url}/workers/leases/{unknown}/result", bad)).status == 422
        ok = {"status": "done", "reward": 1, "speedup": 1}
        assert (await post(pool, f"{url}/workers/leases/{unknown}/result", ok)).status == 409
        assert (await pool.request("GET", f"{url}/healthz")).status == 200  # still serving


async def test_a_restart_voids_the_leases_of_the_old_server(tmp_path: Path) -> None:
    async with server(tmp_path, ttl=60) as srv, HttpPool() as pool:
        job_id = await EvalClient(srv.url, pool=pool, token=TOKEN).submit(request("r"))
        old = (await post(pool, f"{srv.url}/workers/lease", {"worker": "a", "wait": 5})).json()
    async with server(tmp_path, ttl=60) as srv, HttpPool() as pool:
        ok = {"status": "done", "reward": 1, "speedup": 1}
        late = await post(pool, f"{srv.url}/workers/leases/{old['lease_id']}/result", ok)
        assert late.status == 409
        new = (await post(pool, f"{srv.url}/workers/lease", {"worker": "b", "wait": 5})).json()
        assert new["job_id"] == job_id and new["attempt"] == 2
    [(_, st, attempts, result, lease)] = stored_rows(tmp_path / "jobs.db")
    assert (st, attempts, result, lease) == ("running", 2, None, new["lease_id"])


async def test_a_store_without_the_lease_column_opens(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, idem_key TEXT UNIQUE, body_hash TEXT NOT "
            "NULL, request TEXT NOT NULL, status TEXT NOT NULL, result TEXT, error TEXT, "
            "attempts INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, started REAL, "
            "finished REAL)"
        )
        conn.execute(
            "INSERT INTO jobs VALUES ('j1', NULL, 'h', '{}', 'running', NULL, NULL, 1, 0, 0, NULL)"
        )
    async with JobStore(db) as store:
        assert await store.mark_running("j1", "L1")
        assert not await store.finish("j1", "done", {"reward": 1}, None, "other")
        assert await store.finish("j1", "done", {"reward": 1}, None, "L1")


async def eval_worker(url: str, *args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "AGENTFLEET_EVAL_TOKEN": TOKEN}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from agentfleet.cli import app; app()",
        "eval-worker", "--server", url, "--wait", "2", *args,
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def slow_worker_leases(
    client: EvalClient, url: str, name: str, key: str
) -> tuple[asyncio.subprocess.Process, str]:
    """An eval-worker ``name`` whose evaluations take 120 s, and a job it has leased."""
    worker = await eval_worker(url, "--name", name, "--test-latency", "120")
    job_id = await client.submit(request(key))

    async def leased() -> bool:
        return (await client.status(job_id))["status"] == "running"

    await wait_for(leased)
    return worker, job_id


async def test_a_sigkilled_eval_worker_job_runs_once_more(tmp_path: Path) -> None:
    """SIGKILL an eval-worker process mid-evaluation: the job is requeued after the lease
    lapses, finishes once on another worker, and is stored once."""
    async with server(tmp_path, ttl=1.5) as srv, HttpPool() as pool:
        client = EvalClient(srv.url, pool=pool, token=TOKEN)
        doomed, job_id = await slow_worker_leases(client, srv.url, "doomed", "kill-me")
        health = await client.health()
        assert [w["worker"] for w in health["worker_slots"] if w["job_id"]] == ["doomed"]
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
        rescuer = await eval_worker(
            srv.url, "--name", "rescuer", "--test-latency", "0.1", "--max-jobs", "1"
        )
        try:
            done = await client.status(job_id, wait=30)
            assert await rescuer.wait() == 0
        finally:
            if rescuer.returncode is None:
                rescuer.kill()
                await rescuer.wait()
    assert done["status"] == "done" and done["attempts"] == 2 and done["reward"] == 1.0
    [(_, st, attempts, result, _)] = stored_rows(tmp_path / "jobs.db")
    assert (st, attempts) == ("done", 2) and result is not None


async def test_eval_worker_runs_the_real_evaluator(tmp_path: Path) -> None:
    """A real evaluation (perf-lite reference patch) in an eval-worker process, with the
    server's settings (repeats) and the worker's own in-process sandboxes, pinned."""
    from agentfleet.evaluation.config import EvalConfig
    from agentfleet.evaluation.sandboxes import default_evaluator_factory

    def first_task() -> tuple[str, str, str]:
        ds = load_dataset("perf-lite")
        split, ids = sorted(ds.splits.items())[0]
        task = ds.task(ids[0])
        return split, task.id, task.solution_patch

    split, task_id, patch = await asyncio.to_thread(first_task)
    cfg = EvalConfig(repeats=3)
    app = create_app(
        evaluator_factory=default_evaluator_factory(config=cfg, confine="off"),
        workers=0,
        token=TOKEN,
        worker_spec={"config": cfg.model_dump(mode="json")},
    )
    cpu = str(min(os.sched_getaffinity(0)))
    async with serve_in_loop(app) as srv, HttpPool() as pool:
        worker = await eval_worker(srv.url, "--cpus", cpu, "--confine", "off", "--max-jobs", "1")
        try:
            req = EvalRequest(
                exit_status="Submitted", result=patch, instance_id=task_id,
                split=split, idempotency_key="real",
            )  # fmt: skip
            res = await EvalClient(srv.url, pool=pool, token=TOKEN).evaluate(req, timeout=240)
            assert await worker.wait() == 0
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
    assert res.info["status"] == "ok", res.info
    assert res.speedup > 1.0 and res.info["timing"]["rounds"] == 3


def test_eval_worker_rejects_bad_options() -> None:
    from typer.testing import CliRunner

    from agentfleet.cli import app

    runner = CliRunner()
    bad_url = runner.invoke(app, ["eval-worker", "--server", "ftp://x"])
    assert bad_url.exit_code == 2
    assert "--server 'ftp://x': not an http(s) URL" in " ".join(bad_url.output.split())
    bad_cpus = runner.invoke(app, ["eval-worker", "--server", "http://127.0.0.1:1", "--cpus", "x"])
    assert bad_cpus.exit_code == 2 and "CPU list" in bad_cpus.output


async def test_sigterm_hands_the_lease_back_and_the_job_runs_again_at_once(
    tmp_path: Path,
) -> None:
    """SIGTERM an eval-worker mid-evaluation, with a lease TTL far longer than the test:
    the worker cancels its evaluation, hands its lease back and exits 143; the job is queued
    again at once (that start not counted), another eval-worker finishes it, stored once."""
    async with server(tmp_path, ttl=600) as srv, HttpPool() as pool:
        client = EvalClient(srv.url, pool=pool, token=TOKEN)
        worker, job_id = await slow_worker_leases(client, srv.url, "stopped", "term")
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 30) == 143
        back = await client.status(job_id)
        assert (back["status"], back["attempts"]) == ("queued", 0), back
        metrics = (await pool.request("GET", f"{srv.url}/metrics", headers=auth())).text()
        rescuer = await eval_worker(
            srv.url, "--name", "rescuer", "--test-latency", "0.1", "--max-jobs", "1"
        )
        try:
            done = await client.status(job_id, wait=30)
            assert await asyncio.wait_for(rescuer.wait(), 30) == 0
        finally:
            if rescuer.returncode is None:
                rescuer.kill()
                await rescuer.wait()
    assert "agentfleet_eval_leases_released_total 1.0" in metrics
    assert "agentfleet_eval_leases_expired_total 0.0" in metrics
    assert done["status"] == "done" and done["attempts"] == 1 and done["reward"] == 1.0
    [(_, st, attempts, result, _)] = stored_rows(tmp_path / "jobs.db")
    assert (st, attempts) == ("done", 1) and result is not None


async def test_release_route(tmp_path: Path) -> None:
    """``POST /workers/leases/{id}/release``: the job is queued again at once, uncounted;
    the lease is dead from then on (heartbeat 410, result 409, release 410); a released
    job is leased anew; unknown leases and missing tokens are refused."""
    async with server(tmp_path, ttl=600) as srv, HttpPool() as pool:
        url = srv.url
        client = EvalClient(url, pool=pool, token=TOKEN)
        job_id = await client.submit(request("rel"))
        ask = {"worker": "a", "wait": 5}
        first = (await post(pool, f"{url}/workers/lease", ask)).json()
        no_token = await pool.request("POST", f"{url}/workers/leases/{first['lease_id']}/release")
        assert no_token.status == 401
        rel = await post(pool, f"{url}/workers/leases/{first['lease_id']}/release")
        assert rel.status == 200 and rel.json() == {"released": True, "job_id": job_id}
        assert (await client.status(job_id))["status"] == "queued"
        again = await post(pool, f"{url}/workers/leases/{first['lease_id']}/release")
        assert again.status == 410
        beat = await post(pool, f"{url}/workers/leases/{first['lease_id']}/heartbeat")
        assert beat.status == 410
        ok = {"status": "done", "reward": 1.0, "speedup": 1.0}
        late = await post(pool, f"{url}/workers/leases/{first['lease_id']}/result", ok)
        assert late.status == 409
        assert (await post(pool, f"{url}/workers/leases/{'n' * 32}/release")).status == 410
        second = (await post(pool, f"{url}/workers/lease", {**ask, "worker": "b"})).json()
        assert second["job_id"] == job_id and second["attempt"] == 1
        stored = await post(pool, f"{url}/workers/leases/{second['lease_id']}/result", ok)
        assert stored.status == 200
        schema = (await pool.request("GET", f"{url}/openapi.json", headers=auth())).json()
    assert "/workers/leases/{lease_id}/release" in schema["paths"]
    [(_, st, attempts, _, lease)] = stored_rows(tmp_path / "jobs.db")
    assert (st, attempts, lease) == ("done", 1, second["lease_id"])


async def test_a_closing_server_answers_its_long_polls_at_once(tmp_path: Path) -> None:
    """As the server closes, a lease ask and a job wait still waiting (60 s each) are
    answered at once: no job (204), the job as it is (200). Before, they held the shutdown
    until uvicorn cut them: a 500 with a traceback, after ``timeout_graceful_shutdown``."""
    async with HttpPool() as pool:
        async with asyncio.timeout(30):  # the long polls alone would take 60 s
            async with server(tmp_path, ttl=600) as srv:
                url = srv.url
                job_id = await EvalClient(url, pool=pool, token=TOKEN).submit(request("c"))
                leased = await post(pool, f"{url}/workers/lease", {"worker": "a", "wait": 5})
                assert leased.json()["job_id"] == job_id  # running remotely from now on
                ask = asyncio.create_task(
                    post(pool, f"{url}/workers/lease", {"worker": "b", "wait": 60})
                )
                wait_url = f"{url}/evaluations/{job_id}?wait=60"
                poll = asyncio.create_task(
                    pool.request("GET", wait_url, headers=auth(), retry=NO_RETRY)
                )
                await asyncio.sleep(0.5)  # both wait in the server now
                assert not ask.done() and not poll.done()
            asked, polled = await ask, await poll
    assert asked.status == 204
    assert polled.status == 200 and polled.json()["status"] == "running"


async def test_a_draining_server_grants_no_lease(tmp_path: Path) -> None:
    """A lease ask that reaches the server once it started closing (its request read just
    before the listener closed) gets no job, even with one queued: the job stays queued,
    its start uncounted. (The worker's evaluation would be for nothing: no live server
    would know its lease.)"""
    from agentfleet.evaluation.jobs import JobManager
    from agentfleet.evaluation.remote import LeaseAsk, RemoteWorkers
    from agentfleet.evaluation.submission import TestModeEvaluator

    store = await JobStore(tmp_path / "jobs.db").open()
    jobs = JobManager(store, TestModeEvaluator(0.1), workers=0)
    try:
        await jobs.start()
        job, _ = await jobs.submit(request("d"), "d")
        jobs.drain()
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        assert await RemoteWorkers(jobs).lease(LeaseAsk(worker="w", wait=20), never) is None
        assert (await jobs.wait(job.id, 20)).status == "queued"  # type: ignore[union-attr]
    finally:
        await jobs.stop()
        await store.close()
    [(_, st, attempts, _, lease)] = stored_rows(tmp_path / "jobs.db")
    assert (st, attempts, lease) == ("queued", 0, None)


async def test_a_draining_server_starts_no_local_job(tmp_path: Path) -> None:
    """Between drain() and stop() (the server closing its connections), a local worker that
    finishes its job starts no queued one: it would be cancelled at stop, its start counted
    (after max_attempts such stops, a job that never ran whole is failed)."""
    from agentfleet.evaluation.jobs import JobManager
    from agentfleet.evaluation.schema import EvalRequest as Req

    gate = asyncio.Event()
    started: list[str] = []

    class Gated:
        async def evaluate(self, req: Req) -> Any:
            started.append(req.instance_id)
            await gate.wait()
            return (1.0, 1.0, {})

    store = await JobStore(tmp_path / "jobs.db").open()
    jobs = JobManager(store, Gated(), workers=1)
    try:
        await jobs.start()
        first, _ = await jobs.submit(request("a", "t1"), "a")
        second, _ = await jobs.submit(request("b", "t2"), "b")
        while not started:  # noqa: ASYNC110 (the worker's start is what is awaited)
            await asyncio.sleep(0.01)
        jobs.drain()
        gate.set()
        async with asyncio.timeout(20):  # (a wait answers at once now: polled)
            while (await jobs.get(first.id)).status != "done":  # type: ignore[union-attr]  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        for _ in range(20):  # the worker's next turn, had it one
            await asyncio.sleep(0.01)
        assert started == ["t1"]
    finally:
        await jobs.stop()
        await store.close()
    rows = {row[0]: row[1:3] for row in stored_rows(tmp_path / "jobs.db")}
    assert rows[second.id] == ("queued", 0), rows


async def test_results_must_be_finite_and_lease_ids_well_formed(tmp_path: Path) -> None:
    """A result with NaN or infinity is refused (422; it once was stored, and the server
    then answered 500 to a full queue and to waits); NaN deep in ``info`` is stored as
    null. A lease id of another shape is a 422 on every lease route: nothing is kept for it
    (unknown ids of any length used to be remembered for 10 minutes)."""
    async with server(tmp_path, ttl=600) as srv, HttpPool() as pool:
        url = srv.url
        client = EvalClient(url, pool=pool, token=TOKEN)
        job_id = await client.submit(request("nan"))
        lease = (await post(pool, f"{url}/workers/lease", {"worker": "a", "wait": 5})).json()
        result_url = f"{url}/workers/leases/{lease['lease_id']}/result"
        for bad in ({"speedup": float("inf")}, {"reward": float("nan")}, {"elapsed_s": 1e999}):
            body = {"status": "done", "reward": 1.0, "speedup": 2.0, **bad}
            assert (await post(pool, result_url, body)).status == 422, bad
        ok = {"status": "done", "reward": 1.0, "speedup": 2.0, "info": {"x": float("nan")}}
        assert (await post(pool, result_url, ok)).status == 200
        done = await client.status(job_id)
        assert done["speedup"] == 2.0 and done["info"]["x"] is None
        for bad_id in ("x" * 65, "short", "has.dot" * 3):
            for route in ("heartbeat", "release", "result"):
                answer = await post(pool, f"{url}/workers/leases/{bad_id}/{route}", ok)
                assert answer.status == 422, (bad_id, route, answer.status)
        assert (await post(pool, f"{url}/workers/leases/{'y' * 32}/release")).status == 410


async def test_the_throughput_window_stays_bounded_without_readers(tmp_path: Path) -> None:
    """Finished jobs' times older than the throughput window (a minute) are dropped as jobs
    finish, not only when /metrics or /healthz reads the throughput."""
    from agentfleet.evaluation.jobs import JobManager
    from agentfleet.evaluation.submission import TestModeEvaluator

    store = await JobStore(None).open()
    jobs = JobManager(store, TestModeEvaluator(0.0), workers=1)
    try:
        await jobs.start()
        jobs._finished_at.extend([0.0] * 1000)  # as if a thousand jobs ended long ago
        job, _ = await jobs.submit(request("t"), "t")
        assert (await jobs.wait(job.id, 30)).status == "done"  # type: ignore[union-attr]
        assert len(jobs._finished_at) == 1
    finally:
        await jobs.stop()
        await store.close()


async def test_healthz_shows_no_lease_id(tmp_path: Path) -> None:
    """/healthz needs no token: it shows who holds which job, never the lease ids that a
    result or a release is posted under."""
    async with server(tmp_path, ttl=600) as srv, HttpPool() as pool:
        await EvalClient(srv.url, pool=pool, token=TOKEN).submit(request("h"))
        lease = (await post(pool, f"{srv.url}/workers/lease", {"worker": "a", "wait": 5})).json()
        health = await pool.request("GET", f"{srv.url}/healthz")
    assert health.status == 200
    assert lease["lease_id"] not in health.text()
    assert [w["job_id"] for w in health.json()["worker_slots"]] == [lease["job_id"]]


async def test_a_stop_that_meets_a_lost_lease_still_stops_the_worker() -> None:
    """The lease is lost (a heartbeat got 410, which cancels the evaluation) at the moment
    the worker is stopped: the stop is not taken for the loss and swallowed."""
    worker = EvalWorker("http://127.0.0.1:9", WorkerEvaluators(), name="w", cpus=None)
    forever: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def outcome(lease: dict[str, Any]) -> Any:
        await forever

    async def lost_and_stopped(
        lease_id: str, period: float, lost: asyncio.Event, work: asyncio.Future[Any]
    ) -> None:
        lost.set()
        evaluating.cancel()  # the stop...
        work.cancel()  # ...and the heartbeat's own cancel of the evaluation, together

    worker._outcome = outcome  # type: ignore[method-assign]
    worker._heartbeat = lost_and_stopped  # type: ignore[method-assign]
    lease = {"lease_id": "l" * 32, "job_id": "j", "heartbeat_s": 1.0}
    evaluating = asyncio.create_task(worker._evaluate(lease))
    with pytest.raises(asyncio.CancelledError):
        await evaluating


async def test_a_store_that_fails_to_open_leaves_no_thread(tmp_path: Path) -> None:
    """A --db file that is no database: the open fails and closes its connection (its
    thread, not a daemon, used to keep the server's process alive after the failed start)."""
    import threading

    bad = tmp_path / "jobs.db"
    bad.write_bytes(b"not a database " * 100)
    before = set(threading.enumerate())
    with pytest.raises(sqlite3.DatabaseError):
        await JobStore(bad).open()
    await asyncio.sleep(0.1)  # the connection's thread ends once its close is processed
    new = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert [t for t in new if not t.name.startswith("asyncio_")] == []  # the loop's pool stays
