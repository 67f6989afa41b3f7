"""The evaluation server: jobs, idempotency, long polls, limits, errors, durability.

Real servers on 127.0.0.1 (port 0) with a tiny in-test evaluator; no mocks of HTTP.
"""

from __future__ import annotations

import asyncio
import io
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, get_args

import aiohttp
import pytest
from typer.testing import CliRunner

from agentfleet.cli import app as cli_app
from agentfleet.evaluation import (
    EvalClient,
    EvalRequest,
    EvalResult,
    EvalTimeout,
    create_app,
    evaluate_info,
)
from agentfleet.evaluation.jobs import PeerCounter
from agentfleet.evaluation.reward import RewardKind
from agentfleet.evaluation.server import run_server
from agentfleet.evaluation.store import JobStore
from agentfleet.http import NO_RETRY, HttpPool, RetryPolicy
from agentfleet.serving import RunningServer, serve_in_loop
from agentfleet.tasks import TaskNotFound


class SleepEvaluator:
    """Sleeps ``delay`` per evaluation; counts starts and completions per instance."""

    def __init__(self, delay: float = 0.05, fail: BaseException | None = None) -> None:
        self.delay = delay
        self.fail = fail
        self.calls: Counter[str] = Counter()
        self.completions: Counter[str] = Counter()

    async def evaluate(self, req: EvalRequest) -> EvalResult:
        self.calls[req.instance_id] += 1
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        self.completions[req.instance_id] += 1
        return EvalResult(reward=1.0, speedup=1.5, info={"instance_id": req.instance_id})


class CheckingEvaluator(SleepEvaluator):
    """Knows only instances named ``task_*``: ``check`` refuses the others at submit."""

    def check(self, req: EvalRequest) -> None:
        if not req.instance_id.startswith("task_"):
            raise TaskNotFound(f"no task {req.instance_id!r}")


class SlowCheckEvaluator(SleepEvaluator):
    """An async ``check`` that takes ``check_delay`` (as the real dry run of a patch does)."""

    def __init__(self, delay: float, check_delay: float) -> None:
        super().__init__(delay)
        self.check_delay = check_delay
        self.checks = 0

    async def check(self, req: EvalRequest) -> None:
        self.checks += 1
        await asyncio.sleep(self.check_delay)


@asynccontextmanager
async def running(evaluator: Any = None, **kw: Any) -> AsyncIterator[RunningServer]:
    async with serve_in_loop(create_app(evaluator, **kw)) as srv:
        yield srv


@pytest.fixture
async def pool() -> AsyncIterator[HttpPool]:
    async with HttpPool(retry=NO_RETRY) as p:
        yield p


def body(instance_id: str = "task_1", **kw: Any) -> dict[str, Any]:
    return {
        "exit_status": "Submitted",
        "result": kw.pop("result", "diff --git a/x b/x\n"),
        "container_id": "container_123",
        "instance_id": instance_id,
        "dataset_name": "test",
        "split": "test",
        **kw,
    }


async def submit(pool: HttpPool, url: str, key: str | None = None, **kw: Any) -> Any:
    headers = {"Idempotency-Key": key} if key else None
    return await pool.request("POST", f"{url}/evaluations", json=body(**kw), headers=headers)


async def metric(pool: HttpPool, url: str, sample: str) -> float:
    """The value of one sample line of ``/metrics`` (0.0 when absent)."""
    text = (await pool.request("GET", f"{url}/metrics")).text()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


QUEUE_FULL = 'agentfleet_eval_jobs_rejected_total{reason="queue_full"}'


# jobs -------------------------------------------------------------------------------
async def test_submit_then_long_poll_returns_when_done(pool: HttpPool) -> None:
    ev = SleepEvaluator(delay=0.5)
    async with running(ev, workers=2) as srv:
        r = await submit(pool, srv.url, key="k1")
        assert r.status == 202
        job_id = r.json()["job_id"]
        assert r.json()["status"] in ("queued", "running")

        now = await pool.request("GET", f"{srv.url}/evaluations/{job_id}")
        assert now.status == 200 and now.json()["status"] in ("queued", "running")

        t0 = time.monotonic()
        r = await pool.request("GET", f"{srv.url}/evaluations/{job_id}", params={"wait": "10"})
        elapsed = time.monotonic() - t0
        data = r.json()
        assert data["status"] == "done"
        assert (data["reward"], data["speedup"]) == (1.0, 1.5)
        assert data["info"] == {"instance_id": "task_1"}
        assert data["error"] is None
        assert elapsed < 2.0  # woke on completion, not at the end of the wait

        # A short wait on a still-running job comes back when the wait expires.
        r2 = await submit(pool, srv.url, key="k2", instance_id="task_2")
        t0 = time.monotonic()
        r = await pool.request(
            "GET", f"{srv.url}/evaluations/{r2.json()['job_id']}", params={"wait": "0.1"}
        )
        assert r.json()["status"] in ("queued", "running")
        assert 0.08 < time.monotonic() - t0 < 0.45


async def test_wait_is_bounded(pool: HttpPool) -> None:
    async with running(SleepEvaluator()) as srv:
        job_id = (await submit(pool, srv.url)).json()["job_id"]
        r = await pool.request("GET", f"{srv.url}/evaluations/{job_id}", params={"wait": "61"})
        assert r.status == 422 and "error" in r.json()


async def test_unknown_job_is_404_json(pool: HttpPool) -> None:
    async with running(SleepEvaluator()) as srv:
        r = await pool.request("GET", f"{srv.url}/evaluations/nope", params={"wait": "1"})
        assert r.status == 404
        assert "nope" in r.json()["error"]


async def test_idempotent_resubmit_is_one_evaluation(pool: HttpPool) -> None:
    ev = SleepEvaluator(delay=0.2)
    async with running(ev) as srv:
        first = await submit(pool, srv.url, key="same")
        again = await submit(pool, srv.url, key="same")
        assert first.status == 202 and again.status in (200, 202)
        assert again.json()["job_id"] == first.json()["job_id"]
        # The key may also travel in the body.
        in_body = await pool.request(
            "POST", f"{srv.url}/evaluations", json=body(idempotency_key="same")
        )
        assert in_body.json()["job_id"] == first.json()["job_id"]

        job_id = first.json()["job_id"]
        done = await pool.request("GET", f"{srv.url}/evaluations/{job_id}", params={"wait": "5"})
        assert done.json()["status"] == "done"
        after = await submit(pool, srv.url, key="same")  # resubmitted once finished
        assert after.json() == {"job_id": job_id, "status": "done", "created": False}
    assert ev.calls["task_1"] == 1


async def test_concurrent_resubmits_share_one_job(pool: HttpPool) -> None:
    ev = SleepEvaluator(delay=0.2)
    async with running(ev, workers=4) as srv:
        rs = await asyncio.gather(*(submit(pool, srv.url, key="burst") for _ in range(25)))
        ids = {r.json()["job_id"] for r in rs}
        assert len(ids) == 1
        assert sorted(r.status for r in rs).count(202) == 1
        job_id = ids.pop()
        r = await pool.request("GET", f"{srv.url}/evaluations/{job_id}", params={"wait": "5"})
        assert r.json()["status"] == "done"
        await asyncio.sleep(0.3)  # a duplicate, if any, would have run by now
    assert ev.calls["task_1"] == 1


async def test_same_key_other_body_is_422(pool: HttpPool) -> None:
    async with running(SleepEvaluator()) as srv:
        assert (await submit(pool, srv.url, key="k")).status == 202
        r = await submit(pool, srv.url, key="k", result="another patch")
        assert r.status == 422
        assert "idempotency key" in r.json()["error"]


async def test_blocking_evaluate(pool: HttpPool) -> None:
    ev = SleepEvaluator(delay=0.1)
    async with running(ev) as srv:
        r = await pool.request("POST", f"{srv.url}/evaluate", json=body())
        assert r.status == 200
        assert r.json() == {"reward": 1.0, "speedup": 1.5, "info": {"instance_id": "task_1"}}
        # With a key it is idempotent too.
        r1 = await pool.request(
            "POST", f"{srv.url}/evaluate", json=body("task_9"), headers={"Idempotency-Key": "b"}
        )
        r2 = await pool.request(
            "POST", f"{srv.url}/evaluate", json=body("task_9"), headers={"Idempotency-Key": "b"}
        )
        assert r1.json() == r2.json()
    assert ev.calls["task_9"] == 1


async def test_failed_evaluation_is_a_failed_job(pool: HttpPool) -> None:
    ev = SleepEvaluator(delay=0.01, fail=RuntimeError("tests exploded"))
    async with running(ev) as srv:
        job_id = (await submit(pool, srv.url)).json()["job_id"]
        r = await pool.request("GET", f"{srv.url}/evaluations/{job_id}", params={"wait": "5"})
        data = r.json()
        assert data["status"] == "failed"
        assert "tests exploded" in data["error"]
        assert data["reward"] == 0.0
        # The server keeps serving, and the client maps it to reward 0.
        reward, speedup, info = await evaluate_info(
            "Submitted", None, "c", "task_2", "test", "test", srv.url, pool=pool
        )
        assert (reward, speedup, info["status"]) == (0.0, 0.0, "failed")
        assert "tests exploded" in info["error"]
        blocking = await pool.request("POST", f"{srv.url}/evaluate", json=body("task_3"))
        assert blocking.status == 200
        assert blocking.json()["reward"] == 0.0
        assert blocking.json()["info"]["status"] == "failed"


async def test_task_not_found_during_evaluation_carries_404(pool: HttpPool) -> None:
    ev = SleepEvaluator(delay=0.01, fail=TaskNotFound("no task 'zzz'"))
    async with running(ev) as srv:
        reward, speedup, info = await evaluate_info(
            "Submitted", None, "c", "zzz", "test", "test", srv.url, pool=pool
        )
    assert (reward, speedup) == (0.0, 0.0)
    assert info["status"] == "failed" and info["status_code"] == 404


async def test_check_rejects_unknown_instance_at_submit(pool: HttpPool) -> None:
    ev = CheckingEvaluator()
    async with running(ev) as srv:
        r = await submit(pool, srv.url, instance_id="missing")
        assert r.status == 404
        assert "missing" in r.json()["error"]
        reward, speedup, info = await evaluate_info(
            "Submitted", None, "c", "missing", "test", "test", srv.url, pool=pool
        )
        assert (reward, speedup) == (0.0, 0.0)
        assert info["status_code"] == 404 and "missing" in info["error"]
        assert (await submit(pool, srv.url, instance_id="task_1")).status == 202
    assert ev.calls["missing"] == 0


# limits -----------------------------------------------------------------------------
async def test_queue_full_answers_429_and_clients_still_get_through(pool: HttpPool) -> None:
    ev = SleepEvaluator(delay=0.3)
    async with running(ev, workers=1, queue_limit=2) as srv:
        rs = [await submit(pool, srv.url, key=f"q{i}", instance_id=f"task_{i}") for i in range(6)]
        statuses = [r.status for r in rs]
        assert statuses.count(429) >= 2, statuses
        refused = next(r for r in rs if r.status == 429)
        assert int(refused.headers["Retry-After"]) >= 1
        assert "queue is full" in refused.json()["error"]

        health = (await pool.request("GET", f"{srv.url}/healthz")).json()
        assert health["queued"] <= 2

        # Clients retry with Retry-After (the pool first, then the client's own loop).
        refused_before = await metric(pool, srv.url, QUEUE_FULL)
        assert refused_before == statuses.count(429)
        quick = RetryPolicy(attempts=2, wait_min=0.05, wait_max=1.0)
        async with HttpPool(retry=quick) as retrying:
            t0 = time.monotonic()
            results = await asyncio.gather(
                *(
                    evaluate_info(
                        "Submitted",
                        "patch",
                        None,
                        f"task_x{i}",
                        "test",
                        "test",
                        srv.url,
                        pool=retrying,
                        timeout=60,
                    )
                    for i in range(6)
                )
            )
        assert all(r[0] == 1.0 for r in results)
        assert time.monotonic() - t0 < 30
        # The retries were needed: the server did refuse some of these submits.
        assert await metric(pool, srv.url, QUEUE_FULL) > refused_before
    assert all(ev.calls[f"task_x{i}"] == 1 for i in range(6))


async def test_concurrent_submits_cannot_overrun_the_queue_limit(pool: HttpPool) -> None:
    """With an async ``check`` between the limit test and the job, a burst of 20 submits
    to a queue of 2 gets at most the free slots; the rest 429 with Retry-After."""
    ev = SlowCheckEvaluator(delay=2.0, check_delay=0.3)
    async with running(ev, workers=1, queue_limit=2) as srv:
        rs = await asyncio.gather(
            *(submit(pool, srv.url, key=f"b{i}", instance_id=f"task_{i}") for i in range(20))
        )
        statuses = Counter(r.status for r in rs)
        assert set(statuses) <= {202, 429}, statuses
        assert 1 <= statuses[202] <= 3, statuses  # 2 slots (+1 if the worker took one early)
        assert statuses[429] >= 17, statuses
        for r in rs:
            if r.status == 429:
                assert int(r.headers["Retry-After"]) >= 1
                assert "queue is full" in r.json()["error"]
        assert ev.checks == statuses[202]  # refused before the (slow) check
        assert await metric(pool, srv.url, QUEUE_FULL) == statuses[429]
        health = (await pool.request("GET", f"{srv.url}/healthz")).json()
        assert health["queued"] + health["running"] <= 3
        # Keyless submits (no store lookup before the limit test) are bounded as well.
        rs = await asyncio.gather(*(submit(pool, srv.url, instance_id="task_k") for _ in range(10)))
        assert [r.status for r in rs].count(202) <= 2
    assert sum(ev.calls.values()) <= 5


async def test_client_submit_gives_up_on_a_queue_that_stays_full(pool: HttpPool) -> None:
    ev = SleepEvaluator(delay=30)
    async with running(ev, workers=1, queue_limit=1) as srv:
        assert (await submit(pool, srv.url, key="r", instance_id="task_r")).status == 202
        for _ in range(100):  # the worker took it: the queue has room for one more
            if (await pool.request("GET", f"{srv.url}/healthz")).json()["running"] == 1:
                break
            await asyncio.sleep(0.02)
        assert (await submit(pool, srv.url, key="q", instance_id="task_q")).status == 202
        client = EvalClient(srv.url, pool=pool)
        req = EvalRequest.model_validate(body("task_late"))
        t0 = time.monotonic()
        with pytest.raises(EvalTimeout, match=r"still full after 1\.5s") as info:
            await client.submit(req, timeout=1.5)
        assert info.value.status_code == 429
        assert 1.4 < time.monotonic() - t0 < 5
        assert await metric(pool, srv.url, QUEUE_FULL) >= 2  # it did retry


async def test_malformed_requests_get_json_errors_and_server_keeps_serving(
    pool: HttpPool,
) -> None:
    async with running(SleepEvaluator()) as srv:
        bad_json = await pool.request(
            "POST",
            f"{srv.url}/evaluations",
            data=b'{"exit_status": "Submitted", ',
            headers={"Content-Type": "application/json"},
        )
        assert bad_json.status in (400, 422)
        assert "error" in bad_json.json()

        missing = await pool.request("POST", f"{srv.url}/evaluations", json={"result": "x"})
        assert missing.status == 422 and "error" in missing.json()

        wrong_type = await pool.request("POST", f"{srv.url}/evaluations", json=[1, 2])
        assert wrong_type.status == 422

        not_json = await pool.request("POST", f"{srv.url}/evaluations", data=b"\xff\xfe")
        assert 400 <= not_json.status < 500 and "error" in not_json.json()

        route = await pool.request("GET", f"{srv.url}/no/such/route")
        assert route.status == 404 and "error" in route.json()

        method = await pool.request("DELETE", f"{srv.url}/evaluations")
        assert method.status == 405 and "error" in method.json()

        assert (await pool.request("GET", f"{srv.url}/healthz")).json()["status"] == "ok"
        assert (await submit(pool, srv.url)).status == 202


async def test_huge_body_is_413(pool: HttpPool) -> None:
    huge = (
        b'{"exit_status": "Submitted", "instance_id": "t", "result": "'
        + b"x" * (11 * 1024 * 1024)
        + b'"}'
    )
    async with running(SleepEvaluator()) as srv, aiohttp.ClientSession() as session:
        headers = {"Content-Type": "application/json"}
        async with session.post(
            f"{srv.url}/evaluations", data=io.BytesIO(huge), headers=headers
        ) as resp:
            assert resp.request_info.headers.get("Content-Length") == str(len(huge))
            assert resp.status == 413
            assert "error" in await resp.json()

        # Chunked upload (no Content-Length): the streamed bytes are counted.
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(huge), 1024 * 1024):
                yield huge[i : i + 1024 * 1024]

        async with session.post(f"{srv.url}/evaluations", data=chunks(), headers=headers) as resp:
            assert "Content-Length" not in resp.request_info.headers
            assert resp.status == 413
            assert "error" in await resp.json()

        assert (await submit(pool, srv.url)).status == 202


async def test_bearer_token(pool: HttpPool, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(SleepEvaluator(), token="s3cret") as srv:
        assert (await pool.request("GET", f"{srv.url}/healthz")).status == 200
        r = await submit(pool, srv.url)
        assert r.status == 401 and "error" in r.json()
        wrong = await pool.request(
            "GET", f"{srv.url}/metrics", headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status == 401
        ok = await pool.request(
            "POST",
            f"{srv.url}/evaluations",
            json=body(),
            headers={"Authorization": "Bearer s3cret"},
        )
        assert ok.status == 202

        reward, _, info = await evaluate_info(
            "Submitted", None, "c", "task_1", "test", "test", srv.url, pool=pool
        )
        assert reward == 0.0 and info["status_code"] == 401
        assert (
            await evaluate_info(
                "Submitted",
                None,
                "c",
                "task_1",
                "test",
                "test",
                srv.url,
                pool=pool,
                token="s3cret",
            )
        )[0] == 1.0
        monkeypatch.setenv("AGENTFLEET_EVAL_TOKEN", "s3cret")
        assert (
            await evaluate_info(
                "Submitted", None, "c", "task_2", "test", "test", srv.url, pool=pool
            )
        )[0] == 1.0


def test_peer_counter_counts_distinct_pairs_in_bounded_memory() -> None:
    c = PeerCounter(max_hosts=2)
    for port in (1000, 1001, 1000, 65535, 0):
        c.add("127.0.0.1", port)
    c.add("::1", 1000)
    assert (c.count, c.saturated) == (5, False)  # the same port of another host is new
    c.add("10.0.0.9", 1)  # a third host: beyond the bound, not counted
    assert (c.count, c.saturated) == (5, True)
    assert len(c._ports) == 2 and all(len(b) == 8192 for b in c._ports.values())
    c.clear()
    assert (c.count, c.saturated) == (0, False)
    c.add("10.0.0.9", 1)
    assert c.count == 1


def test_serve_eval_cli_passes_its_options_through(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr("agentfleet.evaluation.server.run_server", lambda **kw: seen.update(kw))
    runner = CliRunner()
    args = ["serve-eval", "--queue-limit", "7", "--max-body", "2048", "--repeats", "9"]
    out = runner.invoke(cli_app, [*args, "--reward-kind", "binary", "--reference"])
    assert out.exit_code == 0, out.output
    assert seen["queue_limit"] == 7 and seen["max_body"] == 2048
    cfg = seen["eval_config"]
    assert (cfg.repeats, cfg.reward.kind, cfg.reference) == (9, "binary", True)
    seen.clear()
    assert runner.invoke(cli_app, ["serve-eval"]).exit_code == 0
    cfg = seen["eval_config"]
    # repeats unset: each task's own protocol, else DEFAULT_EVAL_REPEATS (EvalConfig.protocol)
    assert (cfg.repeats, cfg.reward.kind, cfg.reference) == (None, "log_speedup", False)
    assert seen["queue_limit"] == 1000 and seen["max_body"] == 10 * 1024 * 1024
    help_text = runner.invoke(cli_app, ["serve-eval", "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--queue-limit", "--max-body", "--repeats", "--reward-kind", "--no-reference"):
        assert flag in help_text
    assert all(kind in help_text for kind in get_args(RewardKind))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--queue-limit", "0"], "--queue-limit"),
        (["--max-body", "10"], "--max-body"),
        (["--repeats", "0"], "--repeats"),
        (["--repeats", "many"], "--repeats"),
        (["--reward-kind", "cubic"], "cubic"),
        (["--host", "0.0.0.0"], "token"),
    ],
)
def test_serve_eval_cli_refuses_bad_values(
    monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.delenv("AGENTFLEET_EVAL_TOKEN", raising=False)
    out = CliRunner().invoke(cli_app, ["serve-eval", *args], env={"COLUMNS": "200"})
    assert out.exit_code == 2, out.output
    assert message in out.output


def test_run_server_refuses_public_host_without_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTFLEET_EVAL_TOKEN", raising=False)
    with pytest.raises(ValueError, match="token"):
        run_server(host="0.0.0.0", port=0, test_latency=0.1)


# observability ----------------------------------------------------------------------
async def test_healthz_metrics_stats(pool: HttpPool) -> None:
    async with running(SleepEvaluator(delay=0.05), workers=3) as srv:
        h = (await pool.request("GET", f"{srv.url}/healthz")).json()
        assert h["status"] == "ok" and h["workers"] == 3
        await asyncio.gather(
            *(
                evaluate_info("Submitted", "p", None, f"task_{i}", "t", "t", srv.url, pool=pool)
                for i in range(5)
            )
        )
        text = (await pool.request("GET", f"{srv.url}/metrics")).text()
        assert "agentfleet_eval_jobs_submitted_total 5.0" in text
        assert "agentfleet_eval_jobs_completed_total 5.0" in text
        assert "agentfleet_eval_duration_seconds_count 5.0" in text
        assert "agentfleet_eval_speedup_bucket" in text
        assert "agentfleet_eval_queue_depth 0.0" in text
        stats = (await pool.request("GET", f"{srv.url}/stats")).json()
        assert stats["completed"] == 5 and 1 <= stats["peak_in_flight"] <= 3
        assert stats["connections_seen"] >= 1
        assert stats["connections_seen_saturated"] is False
        reset = (await pool.request("POST", f"{srv.url}/stats/reset")).json()
        assert reset["completed"] == 0
        assert reset["connections_seen"] == 0


async def test_test_mode_runs_every_job_at_once(pool: HttpPool) -> None:
    async with running(test_latency=0.5) as srv:
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(
                evaluate_info("Submitted", None, "c", f"t{i}", "test", "test", srv.url, pool=pool)
                for i in range(40)
            )
        )
        assert time.monotonic() - t0 < 3.0
        assert all(r[0] == 1.0 and r[2]["test_mode"] for r in results)
        stats = (await pool.request("GET", f"{srv.url}/stats")).json()
        assert stats["peak_in_flight"] >= 30
        assert stats["workers"] is None


# durability -------------------------------------------------------------------------
async def test_restart_resumes_unfinished_jobs_exactly_once(pool: HttpPool, tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite"
    ev = SleepEvaluator(delay=0.4)
    async with running(ev, db_path=db, workers=1) as srv:
        ids = [
            (await submit(pool, srv.url, key=f"d{i}", instance_id=f"task_{i}")).json()["job_id"]
            for i in range(5)
        ]
        first = await pool.request("GET", f"{srv.url}/evaluations/{ids[0]}", params={"wait": "5"})
        assert first.json()["status"] == "done"
        await asyncio.sleep(0.1)  # the second job is now mid-run
    # The server stopped abruptly: its workers were cancelled mid-evaluation.
    async with JobStore(db) as store:
        counts = await store.counts()
    assert counts.get("done", 0) >= 1
    assert counts.get("queued", 0) + counts.get("running", 0) >= 3
    assert counts.get("running", 0) == 1  # the one cut off mid-evaluation
    assert sum(ev.completions.values()) == counts["done"]

    async with running(ev, db_path=db, workers=1) as srv:
        for job_id in ids:
            r = await pool.request("GET", f"{srv.url}/evaluations/{job_id}", params={"wait": "10"})
            assert r.json()["status"] == "done", r.json()
        # The same key after the restart is still the same job.
        again = await submit(pool, srv.url, key="d3", instance_id="task_3")
        assert again.json()["job_id"] == ids[3]
    assert all(ev.completions[f"task_{i}"] == 1 for i in range(5)), ev.completions
    restarted = [i for i in range(5) if ev.calls[f"task_{i}"] == 2]
    assert len(restarted) == 1, ev.calls  # interrupted once, then completed once
    assert sum(ev.calls.values()) == 6
    async with JobStore(db) as store:
        jobs = [await store.get(i) for i in ids]
    assert all(j is not None and j.status == "done" and j.result is not None for j in jobs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _spawn_server(port: int, db: Path, log: Path) -> asyncio.subprocess.Process:
    code = (
        "from agentfleet.evaluation.server import run_server; "
        f"run_server(port={port}, db_path={str(db)!r}, workers=1, test_latency=0.4, "
        "log_level='warning')"
    )
    out = await asyncio.to_thread(open, log, "ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=out, stderr=out
        )
    finally:
        await asyncio.to_thread(out.close)


async def _wait_healthy(pool: HttpPool, url: str, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.returncode is None, "server process exited"
        try:
            r = await pool.request("GET", f"{url}/healthz")
            if r.status == 200 and r.json()["status"] == "ok":
                return
        except (aiohttp.ClientError, OSError):
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("server did not start")


@pytest.mark.slow
async def test_sigkill_then_restart_completes_every_job(pool: HttpPool, tmp_path: Path) -> None:
    db, log = tmp_path / "jobs.sqlite", tmp_path / "server.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = await _spawn_server(port, db, log)
    try:
        await _wait_healthy(pool, url, proc)
        ids = [
            (await submit(pool, url, key=f"k{i}", instance_id=f"task_{i}")).json()["job_id"]
            for i in range(6)
        ]
        r = await pool.request("GET", f"{url}/evaluations/{ids[0]}", params={"wait": "10"})
        assert r.json()["status"] == "done"
        await asyncio.sleep(0.15)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    async with JobStore(db) as store:
        before = {i: await store.get(i) for i in ids}
    done_before = {i for i, j in before.items() if j is not None and j.status == "done"}
    cut_off = {i for i, j in before.items() if j is not None and j.status == "running"}
    assert 1 <= len(done_before) < 6
    assert len(cut_off) <= 1  # one worker: at most one job was mid-evaluation

    proc = await _spawn_server(port, db, log)
    try:
        await _wait_healthy(pool, url, proc)
        for job_id in ids:
            r = await pool.request("GET", f"{url}/evaluations/{job_id}", params={"wait": "20"})
            assert r.json()["status"] == "done", r.json()
        await asyncio.sleep(0.5)  # a second run of any job, if there were one, would land now
        # The restarted server completed exactly the jobs left unfinished, each once.
        stats = (await pool.request("GET", f"{url}/stats")).json()
        assert stats["completed"] == 6 - len(done_before), (stats, done_before)
        completed = await metric(pool, url, "agentfleet_eval_jobs_completed_total")
        assert completed == 6 - len(done_before)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
    async with JobStore(db) as store:
        after = {i: await store.get(i) for i in ids}
    for n, job_id in enumerate(ids):
        job, old = after[job_id], before[job_id]
        assert job is not None and old is not None
        assert job.status == "done" and job.error is None, job
        # Its own result, intact: test mode scores 1.0 / 1.0 and echoes the request.
        assert job.result is not None
        assert (job.result["reward"], job.result["speedup"]) == (1.0, 1.0)
        assert job.result["info"]["instance_id"] == f"task_{n}"
        assert job.result["info"]["test_mode"] is True
        if job_id in done_before:  # finished before the kill: not run again, not rewritten
            assert (job.result, job.finished, job.attempts) == (old.result, old.finished, 1)
        else:  # only a job cut off mid-run was started twice
            assert job.attempts == (2 if job_id in cut_off else 1), (n, job.attempts)


async def test_evaluator_factory_is_owned_by_the_lifespan(pool: HttpPool) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def factory() -> AsyncIterator[SleepEvaluator]:
        events.append("enter")
        yield SleepEvaluator(0.01)
        events.append("exit")

    async with running(evaluator_factory=factory) as srv:
        assert events == ["enter"]
        out = await evaluate_info("Submitted", "p", None, "task_1", "d", "s", srv.url, pool=pool)
        assert out[0] == 1.0
    assert events == ["enter", "exit"]
