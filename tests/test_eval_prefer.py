"""One request per evaluation: ``Prefer: wait=N`` (RFC 7240) on ``POST /evaluations``.

Real servers on 127.0.0.1 (port 0); the evaluators count their runs.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from agentfleet.evaluation import EvalClient, EvalRequest, EvalResult, create_app, evaluate_info
from agentfleet.evaluation.server import prefer_wait
from agentfleet.http import NO_RETRY, HttpPool, PoolLimits
from agentfleet.serving import RunningServer, serve_in_loop


class Counting:
    """Sleeps ``delay`` per evaluation and counts the runs of each instance."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls: Counter[str] = Counter()

    async def evaluate(self, req: EvalRequest) -> EvalResult:
        self.calls[req.instance_id] += 1
        await asyncio.sleep(self.delay)
        return EvalResult(reward=1.0, speedup=1.5, info={"instance_id": req.instance_id})


@asynccontextmanager
async def running(evaluator: Any, **kw: Any) -> AsyncIterator[RunningServer]:
    async with serve_in_loop(create_app(evaluator, **kw)) as srv:
        yield srv


@pytest.fixture
async def pool() -> AsyncIterator[HttpPool]:
    async with HttpPool(retry=NO_RETRY) as p:
        yield p


def body(instance_id: str = "task_1") -> dict[str, Any]:
    return {
        "exit_status": "Submitted",
        "result": "",
        "instance_id": instance_id,
        "dataset_name": "test",
        "split": "test",
    }


def requests_sent(pool: HttpPool) -> int:
    return int(pool.stats()["totals"]["requests"])


def test_prefer_header_parsing() -> None:
    assert prefer_wait(["wait=10"]) == 10.0
    assert prefer_wait(["respond-async, wait=5"]) == 5.0
    assert prefer_wait(["return=minimal", "Wait = 2.5 ; x=y"]) == 2.5
    assert prefer_wait(['wait="3"']) == 3.0
    assert prefer_wait([]) is None
    assert prefer_wait(["respond-async"]) is None
    for bad in ("wait=abc", "wait=-1", "wait=nan", "wait="):
        assert prefer_wait([bad]) is None, bad


async def test_fast_job_answers_200_with_the_result(pool: HttpPool) -> None:
    ev = Counting(0.05)
    async with running(ev, workers=1) as srv:
        r = await pool.request(
            "POST", f"{srv.url}/evaluations", json=body(), headers={"Prefer": "wait=10"}
        )
        assert r.status == 200
        assert r.headers["Preference-Applied"] == "wait=10"
        data = r.json()
        assert data["status"] == "done" and data["created"] is True
        assert (data["reward"], data["speedup"]) == (1.0, 1.5)
        assert data["info"] == {"instance_id": "task_1"}
        assert isinstance(data["job_id"], str)
        # the job is the same one GET shows
        again = await pool.request("GET", f"{srv.url}/evaluations/{data['job_id']}")
        assert again.json()["status"] == "done"
    assert ev.calls == {"task_1": 1}


async def test_slow_job_answers_202_then_polls(pool: HttpPool) -> None:
    ev = Counting(1.0)
    async with running(ev, workers=1) as srv:
        r = await pool.request(
            "POST",
            f"{srv.url}/evaluations",
            json=body(),
            headers={"Prefer": "wait=0.1", "Idempotency-Key": "slow"},
        )
        assert r.status == 202
        assert r.headers["Preference-Applied"] == "wait=0.1"
        assert r.json()["status"] in ("queued", "running")
        job_id = r.json()["job_id"]
        done = await EvalClient(srv.url, pool=pool).wait(job_id)
        assert done["status"] == "done"
        # the same key again, with a wait: the finished job, never a second run
        r = await pool.request(
            "POST",
            f"{srv.url}/evaluations",
            json=body(),
            headers={"Prefer": "wait=10", "Idempotency-Key": "slow"},
        )
        assert r.status == 200 and r.json()["created"] is False
        assert r.json()["job_id"] == job_id and r.json()["reward"] == 1.0
    assert ev.calls == {"task_1": 1}


async def test_wait_is_capped_and_bad_preferences_ignored(pool: HttpPool) -> None:
    async with running(Counting(0.05), workers=1) as srv:
        r = await pool.request(
            "POST", f"{srv.url}/evaluations", json=body(), headers={"Prefer": "wait=3600"}
        )
        assert r.status == 200 and r.headers["Preference-Applied"] == "wait=60"
        r = await pool.request(
            "POST", f"{srv.url}/evaluations", json=body("t2"), headers={"Prefer": "wait=soon"}
        )
        assert r.status == 202 and "Preference-Applied" not in r.headers


async def test_old_clients_without_the_header_are_unchanged(pool: HttpPool) -> None:
    ev = Counting(0.05)
    async with running(ev, workers=1) as srv:
        r = await pool.request("POST", f"{srv.url}/evaluations", json=body())
        assert r.status == 202
        assert set(r.json()) == {"job_id", "status", "created"}
        assert "Preference-Applied" not in r.headers
        r = await pool.request("POST", f"{srv.url}/evaluate", json=body("t2"))
        assert r.status == 200 and r.json()["reward"] == 1.0
    assert ev.calls == {"task_1": 1, "t2": 1}


async def test_evaluate_info_takes_one_request_when_the_job_is_quick(pool: HttpPool) -> None:
    ev = Counting(0.05)
    async with running(ev, workers=1) as srv:
        before = requests_sent(pool)
        out = await evaluate_info(
            "Submitted", "", None, "task_1", "test", "test", srv.url, pool=pool
        )
        assert out[:2] == (1.0, 1.5)
        assert requests_sent(pool) - before == 1
    assert ev.calls == {"task_1": 1}


async def test_evaluate_info_long_polls_a_slow_job_once(pool: HttpPool) -> None:
    ev = Counting(1.0)
    async with running(ev, workers=1) as srv:
        before = requests_sent(pool)
        out = await evaluate_info(
            "Submitted", "", None, "task_1", "test", "test", srv.url, pool=pool, poll_wait=0.2
        )
        assert out[:2] == (1.0, 1.5)
        assert requests_sent(pool) - before >= 2  # the submit, then polls
    assert ev.calls == {"task_1": 1}


async def test_waiting_submits_never_take_every_long_poll_slot() -> None:
    """A pool of 4 per host lets long polls hold 3 slots: the 4th and 5th evaluations
    submit plain (their jobs start at once) and queue their polls instead."""
    ev = Counting(0.5)
    async with HttpPool(PoolLimits(10, 4), retry=NO_RETRY) as small:
        assert small.long_poll_slots() == 3
        async with running(ev, workers=5) as srv:
            outs = await asyncio.gather(
                *(
                    evaluate_info(
                        "Submitted", "", None, f"t{i}", "test", "test", srv.url, pool=small
                    )
                    for i in range(5)
                )
            )
            stats = (await small.request("GET", f"{srv.url}/stats")).json()
    assert all(o[0] == 1.0 for o in outs)
    assert ev.calls == {f"t{i}": 1 for i in range(5)}
    assert stats["peak_in_flight"] == 5
