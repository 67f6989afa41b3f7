"""Faults on the wire (issue 14, items 8 to 11): connect failures, bad bodies, lost jobs,
billed retries; and the fault-injection drill of a whole fleet through TCP fault proxies.

Every server here is real, on 127.0.0.1 port 0; faults come from
:class:`agentfleet.bench.faultproxy.FaultProxy` or from small scripted aiohttp apps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import sandbox_processes

from agentfleet.agent import AgentConfig
from agentfleet.bench.faultproxy import FaultProxy
from agentfleet.evaluation import client as eval_client
from agentfleet.evaluation.client import EvalClient, EvalClientError, EvalRejected, EvalTimeout
from agentfleet.evaluation.evaluator import EvalConfig, Evaluator
from agentfleet.evaluation.jobs import JobManager, TestModeEvaluator
from agentfleet.evaluation.schema import EvalRequest
from agentfleet.evaluation.server import create_app as eval_app
from agentfleet.evaluation.store import JobStore
from agentfleet.fleet.attempts import is_transport_failure, transient_evaluation
from agentfleet.fleet.outcome import TaskOutcome
from agentfleet.fleet.runner import FleetConfig, FleetMonitor, run_fleet
from agentfleet.http import HttpConnectionError, HttpPool, RetryPolicy, Timeouts
from agentfleet.models import ModelSpec
from agentfleet.models.base import ModelError
from agentfleet.models.mock_server import create_mock_llm_app
from agentfleet.models.openai_chat import OpenAIChatModel
from agentfleet.models.pricing import PriceTable, RunBudget
from agentfleet.sandbox.base import CreateSandbox, SandboxError, SandboxNotFound, new_sandbox_id
from agentfleet.sandbox.client import SandboxClient
from agentfleet.sandbox.server import create_app as sandbox_app
from agentfleet.serving import serve_in_loop

FAST = RetryPolicy(attempts=6, wait_min=0.05, wait_max=0.2, budget_s=30.0)
GARBAGE = (200, "<html>502 Bad Gateway (from a proxy)</html>")


# a scripted HTTP server ---------------------------------------------------------------
Reply = tuple[int, str]


class Scripted:
    """An aiohttp app whose routes answer scripted replies first, then ``good(request)``."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Reply]] = {}
        self.good: dict[str, Callable[[web.Request], Any]] = {}
        self.hits: Counter[str] = Counter()
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    def route(self, key: str, good: Callable[[web.Request], Any], *script: Reply) -> None:
        self.good[key] = good
        self.scripts[key] = list(script)

    async def _handle(self, request: web.Request) -> web.Response:
        key = f"{request.method} /{request.match_info['tail']}"
        key = next((k for k in self.good if key.startswith(k)), key)
        self.hits[key] += 1
        if self.scripts.get(key):
            status, body = self.scripts[key].pop(0)
            return web.Response(status=status, text=body, content_type="text/html")
        if key not in self.good:
            return web.json_response({"error": "no route"}, status=404)
        return web.json_response(self.good[key](request))


@asynccontextmanager
async def serve_scripted(s: Scripted) -> AsyncIterator[str]:
    runner = web.AppRunner(s.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.base_events.Server)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()


def eval_request() -> EvalRequest:
    return EvalRequest(
        exit_status="Submitted",
        result="",
        container_id="c1",
        instance_id="task_1",
        dataset_name="test",
        split="test",
    )


def done_job(request: web.Request) -> dict[str, Any]:
    return {"job_id": "j1", "status": "done", "reward": 1.0, "speedup": 2.0, "info": {}}


# item 9: a 200 whose body is not the expected JSON -------------------------------------
async def test_eval_client_retries_a_bad_body_like_a_5xx() -> None:
    s = Scripted()
    s.route("POST /evaluations", lambda r: {"job_id": "j1", "status": "queued"}, GARBAGE)
    s.route("GET /evaluations/j1", done_job, GARBAGE, (200, '{"status": "run'))
    async with serve_scripted(s) as url, HttpPool(retry=FAST) as pool:
        result = await EvalClient(url, pool=pool, poll_wait=0).evaluate(eval_request())
        errors = pool.stats()["totals"]["errors"]
    assert (result.reward, result.speedup) == (1.0, 2.0)
    assert s.hits == Counter({"POST /evaluations": 2, "GET /evaluations/j1": 3})
    assert errors.get("bad_body") == 3


async def test_eval_client_fails_with_its_own_error_on_a_bad_body() -> None:
    s = Scripted()
    s.route("POST /evaluations", lambda r: {"job_id": "j1", "status": "queued"})
    s.route("GET /evaluations/j1", done_job, *[GARBAGE] * 20)
    policy = RetryPolicy(attempts=3, wait_min=0.01, wait_max=0.02)
    async with serve_scripted(s) as url, HttpPool(retry=policy) as pool:
        with pytest.raises(EvalClientError, match="not the expected JSON") as info:
            await EvalClient(url, pool=pool, poll_wait=5).evaluate(eval_request())
    assert not isinstance(info.value, ValueError)
    assert s.hits["GET /evaluations/j1"] == 3  # the long poll retried, then gave up cleanly


async def test_sandbox_client_retries_then_refuses_a_bad_body() -> None:
    result = {"output": "hi\n", "returncode": 0, "truncated": False, "duration_s": 0.01}
    s = Scripted()
    s.route("POST /sandboxes/sb1/exec", lambda r: result, GARBAGE, (200, '{"output": 1}'))
    s.route("GET /sandboxes/sb2", lambda r: {"sandbox_id": "x"}, *[GARBAGE] * 20)
    policy = RetryPolicy(attempts=3, wait_min=0.01, wait_max=0.02)
    async with serve_scripted(s) as url, HttpPool(retry=policy) as pool:
        client = SandboxClient(url, pool=pool)
        out = await client.exec("sb1", "echo hi")
        with pytest.raises(SandboxError) as info:
            await client.get("sb2")
    assert out.output == "hi\n" and s.hits["POST /sandboxes/sb1/exec"] == 3
    assert info.value.status == 502 and "not a SandboxInfo" in str(info.value)
    assert not isinstance(info.value, ValueError)
    assert s.hits["GET /sandboxes/sb2"] == 3


# item 8: connect failures and retry-safe creates ----------------------------------------
async def test_post_without_key_is_retried_after_a_refused_connect() -> None:
    s = Scripted()
    s.route("POST /work", lambda r: {"done": True})
    async with (
        serve_scripted(s) as url,
        FaultProxy(int(url.rsplit(":", 1)[1]), rate=0) as proxy,
        HttpPool(retry=FAST) as pool,
    ):
        proxy.refuse_for(0.3)  # connects are refused (ECONNREFUSED) for a while
        resp = await pool.request("POST", f"{proxy.url}/work", json={})
        errors = pool.stats()["totals"]["errors"]
    assert resp.status == 200 and s.hits["POST /work"] == 1
    assert errors.get("ClientConnectorError", 0) >= 1


async def test_refusing_under_a_burst_of_connects_leaks_no_socket() -> None:
    """Every request closes the listener for a moment while others connect: no accepted
    connection is lost unclosed (asyncio.Server.close() during an accept leaked one)."""
    import gc

    s = Scripted()
    s.route("POST /work", lambda r: {"done": True})

    async def one(port: int) -> bool:
        for _ in range(200):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:  # refused while the proxy is not listening
                await asyncio.sleep(0.02)
                continue
            try:
                writer.write(b"POST /work HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
                return bool(await reader.read(1024))
            except OSError:
                return False
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        return False

    async with (
        serve_scripted(s) as url,
        FaultProxy(int(url.rsplit(":", 1)[1]), rate=1.0, kinds=["refuse"], refuse_s=0.02) as p,
    ):
        # an accepted connection that was dropped leaves its client waiting: bounded here
        done = await asyncio.wait_for(asyncio.gather(*(one(p.port) for _ in range(300))), 60)
        assert all(done)
        assert p.stats["refuse"] >= 10
    gc.collect()  # an unclosed socket's ResourceWarning fails the test here


async def test_post_without_key_is_not_resent_once_it_left() -> None:
    s = Scripted()
    s.route("POST /work", lambda r: {"done": True})
    async with (
        serve_scripted(s) as url,
        FaultProxy(int(url.rsplit(":", 1)[1]), rate=0, script=["reset_after"]) as proxy,
        HttpPool(retry=FAST) as pool,
    ):
        with pytest.raises(HttpConnectionError, match="after 1 attempt"):
            await pool.request("POST", f"{proxy.url}/work", json={})
    assert s.hits["POST /work"] == 1  # the server did it once; the client cannot know


@pytest.mark.parametrize("fault", ["reset_before", "reset_after"])
async def test_sandbox_create_survives_a_lost_answer(tmp_path: Path, fault: str) -> None:
    root = tmp_path / "sandboxes"
    async with serve_in_loop(sandbox_app(root=root)) as server:
        port = int(server.url.rsplit(":", 1)[1])
        async with FaultProxy(port, rate=0, script=[fault]) as proxy, HttpPool(retry=FAST) as pool:
            client = SandboxClient(proxy.url, pool=pool)
            sid = new_sandbox_id()
            info = await client.create(
                CreateSandbox(sandbox_id=sid, task_id="sku-diff", dataset="perf-lite")
            )
            listed = await client.list()
            await client.delete(sid)
    assert info.sandbox_id == sid and info.task_id == "sku-diff"
    assert [i.sandbox_id for i in listed] == [sid]
    assert not root.exists() or list(root.iterdir()) == []


# item 8: the runner starts a task over after a transport fault ------------------------
@asynccontextmanager
async def servers(
    tmp_path: Path, *, eval_workers: int | None = 2, db: Path | None = None
) -> AsyncIterator[tuple[str, str]]:
    """A real sandbox server (process backend) and evaluation server, in this loop."""
    root = tmp_path / "sandboxes"
    async with serve_in_loop(sandbox_app(root=root)) as sandbox:
        evaluator = Evaluator(SandboxClient(sandbox.url), EvalConfig(repeats=2))
        app = eval_app(evaluator, workers=eval_workers, db_path=db)
        async with serve_in_loop(app) as evaluation:
            yield sandbox.url, evaluation.url


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def fleet_config(tmp_path: Path, model: ModelSpec, tasks: list[str] | None) -> FleetConfig:
    return FleetConfig(
        model=model,
        run_dir=tmp_path / "run",
        task_ids=tasks,
        workers=4,
        agent=AgentConfig(step_limit=8),
        sample_every_s=0,  # no /healthz polls: the proxies' connections are the tasks'
    )


async def _submit_reset_twice(tmp_path: Path) -> tuple[TaskOutcome, FleetConfig]:
    """One oracle task whose first evaluation submit is reset on two connections: the
    pool (2 attempts) gives up on it."""
    HttpPool.configure_default(retry=RetryPolicy(attempts=2, wait_min=0.01, wait_max=0.02))
    async with servers(tmp_path) as (sandbox_url, eval_url):
        script = ["reset_before", "reset_before"]
        async with FaultProxy(port_of(eval_url), rate=0, script=script) as proxy:
            cfg = fleet_config(tmp_path, ModelSpec("oracle"), ["dedupe-pairs"])
            cfg.sandbox_url, cfg.eval_url = sandbox_url, proxy.url
            (outcome,) = await run_fleet(cfg)
    assert outcome.exit_status == "Submitted" and outcome.reward > 0, outcome
    assert not outcome.error, outcome
    return outcome, cfg


async def test_runner_starts_a_task_over_after_a_transport_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the evaluation gives up at the pool's last retry, as with a server down for good
    # (a restart is ridden over: the next test)
    monkeypatch.setattr(eval_client, "OUTAGE_S", 0.0)
    outcome, cfg = await _submit_reset_twice(tmp_path)
    assert outcome.attempts == 2, outcome
    (line,) = (cfg.run_dir / "results.jsonl").read_text().splitlines()
    assert json.loads(line)["attempts"] == 2
    assert list((tmp_path / "sandboxes").iterdir()) == []


async def test_an_evaluation_rides_over_the_fault_and_keeps_the_agents_work(
    tmp_path: Path,
) -> None:
    """The same resets with the client's outage budget (the default): the submit is sent
    again after a pause, the task's one try is evaluated, nothing started over."""
    outcome, _ = await _submit_reset_twice(tmp_path)
    assert outcome.attempts == 1, outcome


async def test_a_tasks_cost_limit_covers_all_its_tries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--cost-limit is the task's: a try that starts over after a transport fault gets what
    the earlier tries left (each got the whole limit: a task could spend tries x limit),
    and the dashboard's totals keep the earlier tries' cost."""
    # the evaluation gives up at the pool's last retry, as with a server down for good
    # (a restart is ridden over: tests/test_evaluate_info.py)
    monkeypatch.setattr(eval_client, "OUTAGE_S", 0.0)
    HttpPool.configure_default(retry=RetryPolicy(attempts=2, wait_min=0.01, wait_max=0.02))
    app = create_mock_llm_app(cost_per_call=1.0)
    async with servers(tmp_path) as (sandbox_url, eval_url), serve_in_loop(app) as mock:
        script = ["reset_before", "reset_before"]  # the first try's submit: given up
        async with FaultProxy(port_of(eval_url), rate=0, script=script) as proxy:
            spec = ModelSpec("openai/mock-oracle", url=f"{mock.url}/v1")
            cfg = fleet_config(tmp_path, spec, ["dedupe-pairs"])
            cfg.sandbox_url, cfg.eval_url = sandbox_url, proxy.url
            cfg.agent.cost_limit = 4.0
            monitor = FleetMonitor()
            (outcome,) = await run_fleet(cfg, monitor=monitor)
    assert outcome.attempts == 2, outcome
    assert outcome.exit_status == "CostLimitExceeded", outcome  # the second try ran short
    assert outcome.cost == pytest.approx(4.0), outcome
    assert monitor.model_totals()["cost"] == pytest.approx(4.0)


async def test_a_task_whose_model_stays_unavailable_is_tried_twice(tmp_path: Path) -> None:
    app = create_mock_llm_app(error_rate=1.0, error_kinds=("500",))
    async with servers(tmp_path) as (sandbox_url, eval_url), serve_in_loop(app) as mock:
        retry = RetryPolicy(attempts=2, wait_min=0.01, wait_max=0.02)
        spec = ModelSpec("openai/mock-oracle", url=f"{mock.url}/v1", options={"retry": retry})
        cfg = fleet_config(tmp_path, spec, ["sku-diff"])
        cfg.sandbox_url, cfg.eval_url = sandbox_url, eval_url
        (outcome,) = await run_fleet(cfg)
        async with HttpPool() as pool:
            calls = (await pool.request("GET", f"{mock.url}/stats")).json()["calls"]
    assert outcome.exit_status == "ModelUnavailable" and outcome.attempts == 2
    assert calls == 4  # two tries of two attempts; the first try was not evaluated
    assert outcome.info.get("status") == "not_submitted"  # only the last try was evaluated
    assert "unavailable after 2 attempt(s)" in outcome.error
    assert list((tmp_path / "sandboxes").iterdir()) == []


async def test_an_evaluation_whose_sandbox_server_restarted_is_transient(tmp_path: Path) -> None:
    """The sandbox server stops (its sandboxes deleted) and starts again on the same port
    during an evaluation: the evaluator's next command meets 404 for its sandbox. Nothing
    was judged: the result says ``transient``, so the runner starts the task over."""
    HttpPool.configure_default(retry=FAST)
    root = tmp_path / "sandboxes"
    req = eval_request().model_copy(update={"instance_id": "sku-diff", "dataset_name": "perf-lite"})
    async with serve_in_loop(sandbox_app(root=root)) as first:
        port = port_of(first.url)
        client = SandboxClient(first.url)
        evaluation = asyncio.ensure_future(Evaluator(client, EvalConfig(repeats=2)).evaluate(req))
        for _ in range(600):  # the evaluation made its sandboxes (bounded: 30 s)
            if len(await client.list()) == 2 or evaluation.done():
                break
            await asyncio.sleep(0.05)
        assert not evaluation.done()
    async with serve_in_loop(sandbox_app(root=root), port=port):
        result = await asyncio.wait_for(evaluation, 60)
    assert result.info["status"] == "error", result.info
    assert "SandboxNotFound" in result.info["error"], result.info
    assert result.info.get("transient") is True and transient_evaluation(result.info)


def test_which_failures_start_a_task_over() -> None:
    assert is_transport_failure(SandboxError("unreachable", 503))
    assert is_transport_failure(EvalClientError("connection reset"))
    assert is_transport_failure(EvalClientError("bad gateway", status_code=502))
    assert is_transport_failure(HttpConnectionError("refused"))
    assert not is_transport_failure(SandboxError("too many sandboxes", 429))
    assert not is_transport_failure(EvalRejected("unknown task", status_code=404))
    assert not is_transport_failure(EvalTimeout("an hour passed"))
    assert not is_transport_failure(ValueError("a bug"))
    # the try's own sandbox, lost: its server was killed and started again
    assert is_transport_failure(SandboxNotFound("no sandbox 'sb-1'"))
    lost = {"status": "error", "error": "SandboxNotFound: no sandbox", "transient": True}
    assert transient_evaluation(lost) and transient_evaluation({**lost, "status": "failed"})
    assert not transient_evaluation({**lost, "transient": None})


# item 10: what the evaluation server keeps ----------------------------------------------
class Stuck:
    """An evaluator whose evaluations never end (as if each crashed the server)."""

    def __init__(self) -> None:
        self.started = 0
        self.entered = asyncio.Event()

    async def evaluate(self, req: EvalRequest) -> Any:
        self.started += 1
        self.entered.set()
        await asyncio.Event().wait()

    async def wait_started(self) -> None:
        await asyncio.wait_for(self.entered.wait(), 30)
        self.entered.clear()


async def job_status(url: str, job_id: str) -> dict[str, Any]:
    return await EvalClient(url).status(job_id)


async def test_a_job_that_never_finishes_fails_after_max_attempts(tmp_path: Path) -> None:
    db, stuck = tmp_path / "jobs.sqlite", Stuck()

    def app() -> Any:
        return eval_app(stuck, db_path=db, workers=1, max_attempts=3)

    async with serve_in_loop(app()) as server:
        job_id = await EvalClient(server.url).submit(eval_request())
        await stuck.wait_started()
    for _ in (2, 3):  # each start runs it again; each stop interrupts it
        async with serve_in_loop(app()) as server:
            await stuck.wait_started()
    async with serve_in_loop(app()) as server:  # the 4th start gives up on it
        job = await job_status(server.url, job_id)
        health = await EvalClient(server.url).health()
    assert stuck.started == 3
    assert job["status"] == "failed" and job["attempts"] == 3, job
    assert "started 3 times without finishing" in job["error"]
    assert health["queued"] == 0 and health["running"] == 0


async def aged(db: Path, job_id: str, days: float) -> None:
    """Make a finished job look ``days`` older, straight in the SQLite file."""

    def age() -> None:
        with sqlite3.connect(db) as conn:
            conn.execute(
                "UPDATE jobs SET finished = finished - ? WHERE id = ?", (days * 86400, job_id)
            )

    await asyncio.to_thread(age)


async def test_old_jobs_are_pruned_at_start_and_periodically(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite"
    async with serve_in_loop(eval_app(test_latency=0, db_path=db)) as server:
        client = EvalClient(server.url, poll_wait=5)
        old, new = [await client.submit(eval_request(), idempotency_key=k) for k in ("old", "new")]
        for job_id in (old, new):
            assert (await client.wait(job_id))["status"] == "done"
    await aged(db, old, 8)
    async with serve_in_loop(eval_app(test_latency=0, db_path=db, keep_days=7)) as server:
        with pytest.raises(EvalRejected) as info:
            await job_status(server.url, old)
        assert info.value.status_code == 404
        assert (await job_status(server.url, new))["status"] == "done"
    async with JobStore(db) as store:
        jobs = JobManager(store, TestModeEvaluator(0), workers=1, keep_days=7, prune_every_s=0.05)
        await jobs.start()
        try:
            assert (await jobs.get(new)) is not None
            await aged(db, new, 7.5)
            for _ in range(200):
                if await store.get(new) is None:
                    break
                await asyncio.sleep(0.05)
            assert await store.get(new) is None and await jobs.get(new) is None
            assert await store.counts() == {}
        finally:
            await jobs.stop()


async def test_memory_keeps_job_summaries_not_patches(tmp_path: Path) -> None:
    patch = "diff --git a/x b/x\n" + "+" * 1_000_000 + "\n"
    async with JobStore(tmp_path / "jobs.sqlite") as store:
        gate = asyncio.Event()

        class Gated:
            seen: list[int] = []

            async def evaluate(self, req: EvalRequest) -> Any:
                await gate.wait()
                self.seen.append(len(req.result or ""))
                return (1.0, 1.0, {})

        jobs = JobManager(store, Gated(), workers=1)
        await jobs.start()
        try:
            req = eval_request().model_copy(update={"result": patch})
            ids = [(await jobs.submit(req, f"k{i}"))[0].id for i in range(3)]
            held = [jobs._live[i].request for i in ids]  # queued or running
            gate.set()
            for job_id in ids:
                assert (await jobs.wait(job_id, 30)).status == "done"  # type: ignore[union-attr]
            kept = [jobs._recent[i].request for i in ids]
        finally:
            await jobs.stop()
        stored = await store.get(ids[0])
    assert Gated.seen == [len(patch)] * 3  # the evaluator got the whole patch
    assert stored is not None and stored.request["result"] == patch  # the store keeps it
    for request in held + kept:
        assert "result" not in request and request["instance_id"] == "task_1"


# item 11: LLM calls that may have been billed -------------------------------------------
PRICES = PriceTable({"mock-oracle": (1.0, 2.0)})  # USD per million tokens
ASK = [{"role": "user", "content": "x" * 400}]  # about 101 prompt tokens by the estimate


def llm(url: str, **kw: Any) -> OpenAIChatModel:
    kw.setdefault("retry", FAST)
    return OpenAIChatModel("mock-oracle", url + "/v1", api_key="k", prices=PRICES, **kw)


async def completions(url: str, at_least: int) -> int:
    """The mock's completions, once it made ``at_least`` (a stalled one ends late)."""
    async with HttpPool() as pool:
        for _ in range(200):
            made = int((await pool.request("GET", f"{url}/stats")).json()["completions"])
            if made >= at_least:
                break
            await asyncio.sleep(0.05)
    return made


async def test_llm_read_timeout_is_not_retried_and_counted() -> None:
    app = create_mock_llm_app(dataset=None, stall_calls=1, stall_s=1.5)
    async with serve_in_loop(app) as server:
        budget = RunBudget(None)
        model = llm(
            server.url,
            timeouts=Timeouts(total=None, connect=5, sock_read=0.3),
            sampling={"max_tokens": 1000},
            budget=budget,
        )
        with pytest.raises(ModelError) as info:
            await model.query(ASK)
        made = await completions(server.url, 1)
    assert info.value.exit_status == "ModelTimeout"
    assert made == 1  # the provider generated it: it may bill it
    assert model.stats.calls == 0 and model.stats.possibly_billed == 1
    expected = (101 * 1.0 + 1000 * 2.0) / 1e6  # the prompt, and max_tokens of completion
    assert model.stats.cost == 0 and model.stats.possibly_billed_cost == pytest.approx(expected)
    assert budget.spent == model.stats.cost_bound  # the run's budget counts it


async def test_llm_read_timeout_is_retried_with_an_idempotency_key() -> None:
    app = create_mock_llm_app(dataset=None, stall_calls=1, stall_s=1.5)
    async with serve_in_loop(app) as server:
        model = llm(
            server.url,
            timeouts=Timeouts(total=None, connect=5, sock_read=0.3),
            idempotency_header="Idempotency-Key",
        )
        reply = await model.query(ASK)
    assert reply.possibly_billed == 0 and model.retries == 1  # the key: billed once


async def test_llm_answer_lost_after_the_request_is_counted_as_billed() -> None:
    app = create_mock_llm_app(dataset=None, cost_per_call=0.01)
    async with serve_in_loop(app) as server:
        port = port_of(server.url)
        async with FaultProxy(port, rate=0, script=["reset_after"]) as proxy:
            model = llm(proxy.url)
            reply = await model.query(ASK)
        made = await completions(server.url, 2)
    assert made == 2 and reply.possibly_billed == 1 and model.stats.possibly_billed == 1
    assert model.stats.cost == pytest.approx(0.01)  # the reply received
    assert model.stats.cost_bound == pytest.approx(0.01 * made)  # what the provider billed


# the drill: a fleet through four fault proxies ------------------------------------------
DRILL_SEED = 14


async def job_rows(db: Path) -> list[tuple[str, str, int]]:
    """(instance_id, status, attempts) of every evaluation job, from the SQLite file."""

    def read() -> list[tuple[str, str, int]]:
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT json_extract(request, '$.instance_id'), status, attempts FROM jobs"
            ).fetchall()
        return [(str(i), str(s), int(a)) for i, s, a in rows]

    return await asyncio.to_thread(read)


@pytest.mark.slow
async def test_fleet_survives_faults_on_every_connection_path(tmp_path: Path) -> None:
    """20% of the connections of each path (runner -> sandbox server, runner -> evaluation
    server, evaluation server -> sandbox server, runner -> LLM) reset before or after the
    request, stall, or make the next connects fail: every task is solved, every
    evaluation job runs once, and nothing is left behind."""
    HttpPool.configure_default(retry=RetryPolicy(attempts=8, wait_min=0.05, wait_max=0.5))
    root, db = tmp_path / "sandboxes", tmp_path / "jobs.sqlite"

    def proxy(port: int, name: str, salt: int) -> FaultProxy:
        return FaultProxy(port, rate=0.2, seed=DRILL_SEED + salt, stall_s=1.0, name=name)

    async with AsyncExitStack() as stack:
        enter = stack.enter_async_context
        sandbox = await enter(serve_in_loop(sandbox_app(root=root)))
        to_sandbox = await enter(proxy(port_of(sandbox.url), "eval->sandbox", 1))
        evaluator = Evaluator(SandboxClient(to_sandbox.url), EvalConfig(repeats=1))
        evaluation = await enter(serve_in_loop(eval_app(evaluator, workers=2, db_path=db)))
        mock = await enter(serve_in_loop(create_mock_llm_app()))
        proxies = [
            await enter(proxy(port_of(sandbox.url), "runner->sandbox", 2)),
            await enter(proxy(port_of(evaluation.url), "runner->eval", 3)),
            await enter(proxy(port_of(mock.url), "runner->llm", 9)),  # all kinds early
            to_sandbox,
        ]
        llm_retry = RetryPolicy(attempts=8, wait_min=0.05, wait_max=0.5)
        spec = ModelSpec(
            "openai/mock-oracle", url=f"{proxies[2].url}/v1", options={"retry": llm_retry}
        )
        cfg = fleet_config(tmp_path, spec, None)  # the 8 tasks of perf-lite/test
        cfg.sandbox_url, cfg.eval_url, cfg.sample_every_s = proxies[0].url, proxies[1].url, 0.5
        outcomes = await run_fleet(cfg)
        left = await SandboxClient(sandbox.url).list()
        async with HttpPool() as pool:
            generated = (await pool.request("GET", f"{mock.url}/stats")).json()["completions"]
        faults = {p.name: p.snapshot() for p in proxies}
    print("faults by path:", faults)  # shown with pytest -s
    print("task attempts:", {o.instance_id: o.attempts for o in outcomes})
    assert len(outcomes) == 8
    for o in outcomes:
        assert o.exit_status == "Submitted" and not o.error, o
        assert o.info.get("status") == "ok" and o.reward > 0, o
    kinds = ("reset_before", "reset_after", "stall", "refuse")
    for name, seen in faults.items():  # every path met faults, and every kind was met
        assert sum(seen.get(k, 0) for k in kinds) > 0, (name, seen)
    assert all(sum(seen.get(k, 0) for seen in faults.values()) > 0 for k in kinds), faults
    stats = [
        json.loads(p.read_text())["info"]["model_stats"]
        for p in (cfg.run_dir / "trajectories").glob("*.traj.json")
    ]
    received = sum(m["api_calls"] for m in stats)
    lost = sum(m["possibly_billed"] for m in stats)
    print("LLM completions:", generated, "received:", received, "possibly billed:", lost)
    assert received <= generated <= received + lost  # every generation is counted
    jobs = await job_rows(db)
    print("evaluation jobs:", len(jobs), "attempts:", Counter(a for _, _, a in jobs))
    assert all(status == "done" and attempts == 1 for _, status, attempts in jobs), jobs
    per_task = Counter(i for i, _, _ in jobs)
    assert all(per_task[o.instance_id] <= o.attempts for o in outcomes), (per_task, outcomes)
    assert left == [] and list(root.iterdir()) == []
    assert sandbox_processes(root) == {}
