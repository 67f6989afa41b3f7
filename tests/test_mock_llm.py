"""The mock LLM server: OpenAI protocol, oracle answers, fault injection, latency, stats."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from typer.testing import CliRunner

from agentfleet.agent import AgentConfig
from agentfleet.cli import app as cli_app
from agentfleet.fleet.runner import FleetConfig, run_fleet
from agentfleet.http import HttpPool, PoolLimits, RetryPolicy, pool as pool_module
from agentfleet.models import ModelSpec
from agentfleet.models.mock_server import (
    SUBMIT_SENTINEL,
    UNKNOWN_TASK_REPLY,
    MockConfig,
    create_mock_llm_app,
)
from agentfleet.serving import serve_in_loop
from agentfleet.tasks import load_dataset

PROMPT = (
    "The function total() in a.py sums a list by repeated string concatenation and "
    "conversion, which is quadratic. Make it fast while keeping its behaviour."
)
PATCH = """\
--- a/a.py
+++ b/a.py
@@ -1,5 +1,2 @@
 def total(xs):
-    s = 0
-    for x in xs:
-        s = int(str(s)) + x
-    return s
+    return sum(xs)
"""


def make_mini_dataset(root: Path) -> Path:
    """A one-task dataset folder (name ``mini``, split ``test: [t1]``)."""
    ds = root / "mini"
    (ds / "t1" / "repo").mkdir(parents=True)
    (ds / "dataset.yaml").write_text("name: mini\nsplits:\n  test: [t1]\n")
    (ds / "t1" / "task.yaml").write_text(
        f"title: slow total\nprompt: {PROMPT!r}\n"
        "test_cmd: python -m pytest -q\nworkload_cmd: python -c 'import a'\n"
    )
    (ds / "t1" / "repo" / "a.py").write_text(
        "def total(xs):\n    s = 0\n    for x in xs:\n        s = int(str(s)) + x\n    return s\n"
    )
    (ds / "t1" / "solution.patch").write_text(PATCH)
    return ds


@pytest.fixture
def mini_dataset(tmp_path: Path) -> str:
    return str(make_mini_dataset(tmp_path))


def conversation(*assistant_turns: str) -> list[dict[str, str]]:
    msgs = [
        {"role": "system", "content": "You are a helpful assistant that edits code."},
        {"role": "user", "content": f"<task>\n{PROMPT}\n</task>\nReply with one bash block."},
    ]
    for turn in assistant_turns:
        msgs += [{"role": "assistant", "content": turn}, {"role": "user", "content": "ok"}]
    return msgs


async def post_chat(
    session: aiohttp.ClientSession, url: str, messages: list[dict[str, str]]
) -> tuple[int, dict[str, str], Any]:
    async with session.post(
        f"{url}/v1/chat/completions", json={"model": "mock-oracle", "messages": messages}
    ) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


async def test_official_openai_client_lists_models_and_chats(mini_dataset: str) -> None:
    app = create_mock_llm_app(dataset=mini_dataset, cost_per_call=0.002)
    async with serve_in_loop(app) as server:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        try:
            models = await client.models.list()
            assert [m.id for m in models.data] == ["mock-oracle"]
            completion = await client.chat.completions.create(
                model="mock-oracle",
                messages=conversation(),  # type: ignore[arg-type]
            )
        finally:
            await client.close()
    content = completion.choices[0].message.content
    assert content is not None and "git apply" in content and "return sum(xs)" in content
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 10
    assert completion.usage.completion_tokens == len(content.split())


async def test_streaming_with_openai_client(mini_dataset: str) -> None:
    app = create_mock_llm_app(dataset=mini_dataset)
    async with serve_in_loop(app) as server:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        try:
            stream = await client.chat.completions.create(
                model="mock-oracle",
                messages=conversation(),  # type: ignore[arg-type]
                stream=True,
            )
            parts = [
                c.choices[0].delta.content or ""
                async for c in stream  # type: ignore[union-attr]
                if c.choices
            ]
        finally:
            await client.close()
    assert "git apply" in "".join(parts)


async def test_replies_follow_the_oracle_step_by_step(mini_dataset: str) -> None:
    task = await asyncio.to_thread(lambda: load_dataset(mini_dataset).task("t1"))
    app = create_mock_llm_app(dataset=mini_dataset)
    async with serve_in_loop(app) as server, aiohttp.ClientSession() as session:
        turns: list[str] = []
        for _ in range(5):
            status, _, data = await post_chat(session, server.url, conversation(*turns))
            assert status == 200
            turns.append(data["choices"][0]["message"]["content"])
        _, _, unknown = await post_chat(
            session, server.url, [{"role": "user", "content": "Something else entirely."}]
        )
        async with session.get(f"{server.url}/stats") as resp:
            stats = await resp.json()
    assert "git apply" in turns[0] and PATCH.splitlines()[-1] in turns[0]
    assert task.test_cmd in turns[1]
    assert all(SUBMIT_SENTINEL in t for t in turns[2:])
    assert unknown["choices"][0]["message"]["content"] == UNKNOWN_TASK_REPLY
    assert stats["recognised"] == {"t1": 5} and stats["unrecognised"] == 1
    assert stats["calls"] == stats["completions"] == 6


async def test_task_recognised_by_id_when_prompt_absent(mini_dataset: str) -> None:
    app = create_mock_llm_app(dataset=mini_dataset)
    async with serve_in_loop(app) as server, aiohttp.ClientSession() as session:
        _, _, data = await post_chat(
            session, server.url, [{"role": "user", "content": "Task t1: make it fast."}]
        )
    assert "git apply" in data["choices"][0]["message"]["content"]


@pytest.mark.parametrize("kind", ["429", "500", "drop"])
async def test_injected_error_kinds(mini_dataset: str, kind: str) -> None:
    app = create_mock_llm_app(
        dataset=mini_dataset, error_rate=1.0, error_kinds=(kind,), retry_after=0.25
    )
    async with serve_in_loop(app) as server, aiohttp.ClientSession() as session:
        if kind == "drop":
            with pytest.raises(aiohttp.ClientError):  # ServerDisconnectedError
                await post_chat(session, server.url, conversation())
        else:
            status, headers, body = await post_chat(session, server.url, conversation())
            assert status == int(kind)
            assert "error" in body
            if kind == "429":
                assert headers["Retry-After"] == "0.25"
        async with session.get(f"{server.url}/stats") as resp:
            stats = await resp.json()
        async with session.get(f"{server.url}/metrics") as resp:
            metrics = await resp.text()
    assert stats["calls"] == 1 and stats["completions"] == 0
    assert stats["errors"][kind] == 1 and stats["errors_total"] == 1
    assert stats["in_flight"] == 0
    assert f'agentfleet_mock_llm_injected_errors_total{{kind="{kind}"}} 1' in metrics


async def test_error_rate_is_roughly_respected_and_seeded(mini_dataset: str) -> None:
    app = create_mock_llm_app(dataset=mini_dataset, error_rate=0.3, error_kinds=("500",), seed=7)
    async with serve_in_loop(app) as server, aiohttp.ClientSession() as session:
        statuses = [(await post_chat(session, server.url, conversation()))[0] for _ in range(100)]
    assert 15 <= statuses.count(500) <= 45
    assert statuses.count(200) + statuses.count(500) == 100


async def test_fixed_latency_is_respected(mini_dataset: str) -> None:
    app = create_mock_llm_app(dataset=mini_dataset, latency=0.2)
    async with serve_in_loop(app) as server, aiohttp.ClientSession() as session:
        start = time.monotonic()
        results = await asyncio.gather(
            *(post_chat(session, server.url, conversation()) for _ in range(5))
        )
        elapsed = time.monotonic() - start
        async with session.get(f"{server.url}/stats") as resp:
            stats = await resp.json()
    assert all(status == 200 for status, _, _ in results)
    # Concurrent requests overlap (the sleep never blocks the server's loop).
    assert 0.2 <= elapsed < 1.0
    assert stats["peak_in_flight"] == 5


def test_latency_distributions() -> None:
    import random

    rng = random.Random(1)
    fixed = MockConfig(dataset=None, latency=0.5)
    assert fixed.latency_dist == "fixed" and fixed.sample_latency(rng) == 0.5
    ranged = MockConfig(dataset=None, latency=(0.1, 0.3))
    assert ranged.latency_dist == "uniform"
    assert all(0.1 <= ranged.sample_latency(rng) <= 0.3 for _ in range(100))
    expo = MockConfig(dataset=None, latency=0.2, latency_dist="exponential")
    mean = sum(expo.sample_latency(rng) for _ in range(4000)) / 4000
    assert 0.15 < mean < 0.25
    with pytest.raises(ValueError):
        MockConfig(dataset=None, error_kinds=("418",))
    with pytest.raises(ValueError):
        MockConfig(dataset=None, error_rate=1.5)


async def test_auth_and_context_length_errors(mini_dataset: str) -> None:
    app = create_mock_llm_app(dataset=mini_dataset, require_key="secret")
    async with serve_in_loop(app) as server:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer wrong"}) as session:
            status, _, body = await post_chat(session, server.url, conversation())
            assert status == 401 and body["error"]["code"] == "invalid_api_key"
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer secret"}) as session:
            status, _, _ = await post_chat(session, server.url, conversation())
            assert status == 200
            msgs = [*conversation(), {"role": "user", "content": "TRIGGER_CONTEXT_LENGTH"}]
            status, _, body = await post_chat(session, server.url, msgs)
            assert status == 400
            assert body["error"]["code"] == "context_length_exceeded"
            assert "maximum context length" in body["error"]["message"]
            async with session.get(f"{server.url}/healthz") as resp:
                health = await resp.json()
    assert health == {"status": "ok", "dataset": "mini", "tasks": 1}


def test_unknown_dataset_is_a_clear_error() -> None:
    from agentfleet.models.mock_server import TaskIndex
    from agentfleet.tasks import TaskNotFound

    with pytest.raises(TaskNotFound, match="unknown dataset"):
        TaskIndex.load("/nonexistent/dataset-xyz")
    assert TaskIndex.load(None).tasks == []


# -- cost limits over a real fleet ----------------------------------------------------

QUICK = RetryPolicy(attempts=5, wait_min=0.01, wait_max=0.05, budget_s=30)


@pytest.mark.slow
async def test_run_cost_limit_stops_every_agent_and_results_are_written(tmp_path: Path) -> None:
    """One RunBudget for the run: once the mock's reported cost reaches the tiny limit,
    every agent ends with RunCostLimitExceeded (a clean end) and is still evaluated."""
    ids = ["rr-scheduler", "sku-diff", "dedupe-pairs"]
    async with serve_in_loop(create_mock_llm_app(cost_per_call=0.01)) as mock:
        spec = ModelSpec("openai/mock-oracle", url=f"{mock.url}/v1", options={"retry": QUICK})
        cfg = FleetConfig(
            model=spec,
            run_dir=tmp_path / "run",
            task_ids=ids,
            workers=2,
            agent=AgentConfig(step_limit=6, run_cost_limit=0.001),
            sandbox_root=tmp_path / "sandboxes",
            eval_repeats=1,
        )
        outcomes = await run_fleet(cfg)
        stats = (await HttpPool.for_loop().request("GET", f"{mock.url}/stats")).json()
    assert sorted(o.instance_id for o in outcomes) == sorted(ids)
    for o in outcomes:
        assert o.exit_status == "RunCostLimitExceeded", o
        # scored by the evaluation server (as not submitted), not a failure
        assert o.error == "" and "error" not in o.info and o.info.get("status"), o
    # Only the first calls of the two agents running at once got through.
    assert 1 <= stats["completions"] <= 2
    assert cfg.budget is not None and cfg.budget.spent == pytest.approx(0.01 * stats["completions"])
    assert sum(o.cost for o in outcomes) == pytest.approx(cfg.budget.spent)
    lines = (cfg.run_dir / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert sorted(r["instance_id"] for r in records) == sorted(ids)
    assert {r["exit_status"] for r in records} == {"RunCostLimitExceeded"}
    assert {r["state"] for r in records} == {"done"}
    config = json.loads((cfg.run_dir / "config.json").read_text())
    assert config["run_cost_limit"] == 0.001 and config["cost_limit"] is None


@contextmanager
def mock_llm_thread(**options: Any) -> Iterator[str]:
    """The mock LLM in its own thread and loop (the CLI runs asyncio.run itself)."""
    started: queue.Queue[tuple[str, asyncio.AbstractEventLoop, asyncio.Event]] = queue.Queue()

    async def main() -> None:
        stop = asyncio.Event()
        async with serve_in_loop(create_mock_llm_app(**options)) as server:
            started.put((server.url, asyncio.get_running_loop(), stop))
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    url, loop, stop = started.get(timeout=60)
    try:
        yield url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli_app, list(args), env={"COLUMNS": "200"})


@pytest.mark.slow
def test_cli_cost_limit_flag_overrides_yaml(tmp_path: Path) -> None:
    """--cost-limit beats the YAML's cost_limit; the agent ends with CostLimitExceeded
    after the calls that reached it; --pool LIMIT/PER_HOST sets the loop pools' limits."""
    agent_yaml = tmp_path / "agent.yaml"
    agent_yaml.write_text("cost_limit: 5.0\nstep_limit: 6\n")
    run_dir = tmp_path / "run"
    with mock_llm_thread(cost_per_call=0.01) as url:
        result = invoke(
            "run",
            "--model",
            "openai/mock-oracle",
            "--model-url",
            f"{url}/v1",
            "--task",
            "rr-scheduler",
            "--agent-config",
            str(agent_yaml),
            "--cost-limit",
            "0.015",
            "--pool",
            "20/10",
            "--eval-repeats",
            "1",
            "--sandbox-root",
            str(tmp_path / "sandboxes"),
            "--run-dir",
            str(run_dir),
            "--progress",
            "none",
        )
        assert pool_module._defaults.limits == PoolLimits(20, 10)
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert record["exit_status"] == "CostLimitExceeded" and record["state"] == "done"
    assert record["steps"] == 2 and record["cost"] == pytest.approx(0.02)
    assert (run_dir / "summary.json").exists()
    assert json.loads((run_dir / "config.json").read_text())["cost_limit"] == 0.015


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--pool", "huge"], "unknown pool preset 'huge'"),
        (["--pool", "100/200"], "per-host limit <= total limit"),
        (["--cost-limit", "-1"], "cost-limit"),
    ],
)
def test_cli_rejects_bad_pool_and_limits(tmp_path: Path, args: list[str], needle: str) -> None:
    result = invoke("run", "--run-dir", str(tmp_path / "run"), "--progress", "none", *args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_cli_rejects_unknown_agent_config_key(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("step_limit: 5\ncost_limt: 1\n")
    result = invoke("run", "--agent-config", str(path), "--progress", "none")
    assert result.exit_code == 2, result.output
    assert "unknown agent setting(s) cost_limt" in result.output
    assert "Traceback" not in result.output
