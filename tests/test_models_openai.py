"""OpenAIChatModel / OpenRouterModel against the mock LLM over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import Response
from test_agent import ShellEnv, make_task

from agentfleet.agent import AgentConfig, LightAgent
from agentfleet.http import HttpPool, PoolLimits, RetryPolicy
from agentfleet.http.retry import backoff_delay, retry_after_from_headers
from agentfleet.models import Model, ModelError
from agentfleet.models.mock_server import create_mock_llm_app
from agentfleet.models.openai_chat import (
    OpenAIChatModel,
    OpenRouterModel,
)
from agentfleet.models.pricing import Price, PriceTable, RunBudget
from agentfleet.serving import serve_in_loop

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
FAST = RetryPolicy(attempts=8, wait_min=0.001, wait_max=0.01, budget_s=60)


@pytest.fixture
def mini_dataset(tmp_path: Path) -> str:
    ds = tmp_path / "mini"
    (ds / "t1" / "repo").mkdir(parents=True)
    (ds / "dataset.yaml").write_text("name: mini\nsplits:\n  test: [t1]\n")
    (ds / "t1" / "task.yaml").write_text(
        f"prompt: {PROMPT!r}\ntest_cmd: python -m pytest -q\nworkload_cmd: python -c 'import a'\n"
    )
    (ds / "t1" / "repo" / "a.py").write_text("def total(xs):\n    return 0\n")
    (ds / "t1" / "solution.patch").write_text(PATCH)
    return str(ds)


def conversation(*turns: str) -> list[dict[str, str]]:
    msgs = [
        {"role": "system", "content": "You edit code."},
        {"role": "user", "content": f"Task:\n{PROMPT}"},
    ]
    for turn in turns:
        msgs += [{"role": "assistant", "content": turn}, {"role": "user", "content": "output"}]
    return msgs


def model_for(url: str, **kw: Any) -> OpenAIChatModel:
    kw.setdefault("api_key", "x")
    kw.setdefault("retry", FAST)
    return OpenAIChatModel("mock-oracle", url + "/v1", **kw)


async def mock_stats(url: str) -> dict[str, Any]:
    response = await HttpPool.for_loop().request("GET", f"{url}/stats")
    return response.json()


async def test_content_usage_and_stats(mini_dataset: str) -> None:
    prices = PriceTable({"mock-oracle": (1.0, 2.0)})
    async with serve_in_loop(create_mock_llm_app(dataset=mini_dataset)) as server:
        model = model_for(server.url, prices=prices)
        assert isinstance(model, Model)
        first = await model.query(conversation())
        second = await model.query(conversation(first.content))
    assert "git apply" in first.content and "python -m pytest -q" in second.content
    assert first.prompt_tokens > 10 and first.completion_tokens == len(first.content.split())
    assert first.cost == pytest.approx(
        (first.prompt_tokens * 1.0 + first.completion_tokens * 2.0) / 1e6
    )
    assert model.stats.calls == 2
    assert model.stats.prompt_tokens == first.prompt_tokens + second.prompt_tokens
    assert model.stats.completion_tokens == first.completion_tokens + second.completion_tokens
    assert model.stats.cost == pytest.approx(first.cost + second.cost)


async def test_cost_reported_by_server_wins(mini_dataset: str) -> None:
    app = create_mock_llm_app(dataset=mini_dataset, cost_per_call=0.0125)
    async with serve_in_loop(app) as server:
        model = model_for(server.url, prices=PriceTable({"mock-oracle": (1000.0, 1000.0)}))
        reply = await model.query(conversation())
    assert reply.cost == pytest.approx(0.0125)
    assert model.stats.cost == pytest.approx(0.0125)


async def test_unknown_model_costs_nothing_with_one_warning(
    mini_dataset: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agentfleet.models.pricing")
    async with serve_in_loop(create_mock_llm_app(dataset=mini_dataset)) as server:
        model = OpenAIChatModel(
            "some-unpriced-model-xyz", server.url + "/v1", api_key="x", retry=FAST
        )
        replies = [await model.query(conversation()) for _ in range(3)]
    assert all(r.cost == 0.0 for r in replies) and model.stats.cost == 0.0
    warnings = [r for r in caplog.records if "some-unpriced-model-xyz" in r.getMessage()]
    assert len(warnings) == 1


async def test_survives_30_percent_injected_errors(mini_dataset: str) -> None:
    app = create_mock_llm_app(
        dataset=mini_dataset, error_rate=0.3, error_kinds=("429", "500", "drop"), seed=1234
    )
    async with serve_in_loop(app) as server:
        model = model_for(server.url)
        for _ in range(30):
            reply = await model.query(conversation())
            assert "git apply" in reply.content
        stats = await mock_stats(server.url)
    assert model.stats.calls == 30
    assert stats["completions"] == 30
    assert stats["errors_total"] > 0
    assert all(stats["errors"][kind] > 0 for kind in ("429", "500", "drop"))
    assert stats["calls"] == 30 + stats["errors_total"]
    # One retry layer (the model's): exactly one retry per injected failure.
    assert model.retries == stats["errors_total"]


async def test_retries_exhausted_is_model_unavailable(mini_dataset: str) -> None:
    app = create_mock_llm_app(dataset=mini_dataset, error_rate=1.0, error_kinds=("500",))
    async with serve_in_loop(app) as server:
        model = model_for(server.url, retry=RetryPolicy(attempts=3, wait_min=0.001, wait_max=0.002))
        with pytest.raises(ModelError) as info:
            await model.query(conversation())
        stats = await mock_stats(server.url)
    assert info.value.exit_status == "ModelUnavailable"
    assert "3 attempt" in str(info.value)
    assert stats["calls"] == 3  # not 3 x the pool's own attempts
    assert model.stats.calls == 0


@pytest.mark.parametrize("kind", ["429", "drop"])
async def test_pool_does_not_retry_under_the_model(mini_dataset: str, kind: str) -> None:
    """429 and dropped connections, which the pool would retry, are retried once per
    model attempt: the server sees exactly ``attempts`` calls."""
    app = create_mock_llm_app(
        dataset=mini_dataset, error_rate=1.0, error_kinds=(kind,), retry_after=0.01
    )
    async with serve_in_loop(app) as server:
        model = model_for(server.url, retry=RetryPolicy(attempts=3, wait_min=0.001, wait_max=0.002))
        with pytest.raises(ModelError) as info:
            await model.query(conversation())
        stats = await mock_stats(server.url)
        pool_retries = HttpPool.for_loop().stats()["totals"]["retries"]
    assert info.value.exit_status == "ModelUnavailable"
    assert stats["calls"] == 3 and model.retries == 2
    assert pool_retries == 0


async def test_retry_after_above_the_cap_is_model_unavailable(mini_dataset: str) -> None:
    app = create_mock_llm_app(
        dataset=mini_dataset, error_rate=1.0, error_kinds=("429",), retry_after=121
    )
    async with serve_in_loop(app) as server:
        model = model_for(server.url)
        with pytest.raises(ModelError, match="over 120 s") as info:
            await model.query(conversation())
        stats = await mock_stats(server.url)
    assert info.value.exit_status == "ModelUnavailable" and stats["calls"] == 1


async def test_retry_after_is_honoured(mini_dataset: str) -> None:
    app = create_mock_llm_app(
        dataset=mini_dataset, error_rate=1.0, error_kinds=("429",), retry_after=0.3
    )
    async with serve_in_loop(app) as server:
        model = model_for(server.url, retry=RetryPolicy(attempts=2, wait_min=0.001, wait_max=0.002))
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(ModelError, match="429"):
            await model.query(conversation())
        elapsed = loop.time() - start
    assert elapsed >= 0.3  # waited Retry-After, not the tiny backoff


async def test_wrong_key_is_auth_error_not_retried(mini_dataset: str) -> None:
    app = create_mock_llm_app(dataset=mini_dataset, require_key="secret")
    async with serve_in_loop(app) as server:
        model = model_for(server.url, api_key="wrong")
        with pytest.raises(ModelError) as info:
            await model.query(conversation())
        stats = await mock_stats(server.url)
        ok = await model_for(server.url, api_key="secret").query(conversation())
    assert info.value.exit_status == "ModelAuthError"
    assert "401" in str(info.value)
    assert stats["calls"] == 1
    assert "git apply" in ok.content


async def test_api_key_from_env(mini_dataset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_LLM_KEY", "secret")
    app = create_mock_llm_app(dataset=mini_dataset, require_key="secret")
    async with serve_in_loop(app) as server:
        good = OpenAIChatModel("m", server.url + "/v1", api_key_env="MY_LLM_KEY", retry=FAST)
        assert (await good.query(conversation())).content
        monkeypatch.delenv("MY_LLM_KEY")
        keyless = OpenAIChatModel("m", server.url + "/v1", api_key_env="MY_LLM_KEY", retry=FAST)
        with pytest.raises(ModelError, match=r"\$MY_LLM_KEY") as info:
            await keyless.query(conversation())
    assert info.value.exit_status == "ModelAuthError"


async def test_context_length_error(mini_dataset: str) -> None:
    async with serve_in_loop(create_mock_llm_app(dataset=mini_dataset)) as server:
        model = model_for(server.url)
        msgs = [*conversation(), {"role": "user", "content": "TRIGGER_CONTEXT_LENGTH"}]
        with pytest.raises(ModelError) as info:
            await model.query(msgs)
        stats = await mock_stats(server.url)
    assert info.value.exit_status == "ContextLengthExceeded"
    assert "context" in str(info.value)
    assert stats["calls"] == 1


async def test_unknown_route_is_request_error(mini_dataset: str) -> None:
    async with serve_in_loop(create_mock_llm_app(dataset=mini_dataset)) as server:
        model = OpenAIChatModel("m", server.url + "/nope", api_key="x", retry=FAST)
        with pytest.raises(ModelError) as info:
            await model.query(conversation())
    assert info.value.exit_status == "ModelRequestError" and "404" in str(info.value)


async def test_connection_refused_is_model_unavailable() -> None:
    model = OpenAIChatModel(
        "m", "http://127.0.0.1:9/v1", api_key="x", retry=RetryPolicy(3, 0.001, 0.002)
    )
    with pytest.raises(ModelError) as info:
        await model.query(conversation())
    assert info.value.exit_status == "ModelUnavailable"


async def test_cost_limit(mini_dataset: str) -> None:
    app = create_mock_llm_app(dataset=mini_dataset, cost_per_call=0.4)
    async with serve_in_loop(app) as server:
        model = model_for(server.url, cost_limit=1.0)
        for _ in range(3):  # 0.4, 0.8, 1.2: the third call crosses the limit
            await model.query(conversation())
        with pytest.raises(ModelError) as info:
            await model.query(conversation())
        stats = await mock_stats(server.url)
    assert info.value.exit_status == "CostLimitExceeded"
    assert stats["calls"] == 3 and model.stats.calls == 3


async def test_run_budget_shared_by_models(mini_dataset: str) -> None:
    budget = RunBudget(1.0)
    app = create_mock_llm_app(dataset=mini_dataset, cost_per_call=0.3)
    async with serve_in_loop(app) as server:
        models = [model_for(server.url, budget=budget) for _ in range(2)]
        for i in range(4):  # 1.2 spent by the two models together
            await models[i % 2].query(conversation())
        assert budget.exceeded and budget.spent == pytest.approx(1.2)
        for model in models:
            with pytest.raises(ModelError) as info:
                await model.query(conversation())
            assert info.value.exit_status == "RunCostLimitExceeded"


async def test_openrouter_model_asks_for_cost(mini_dataset: str) -> None:
    app = create_mock_llm_app(dataset=mini_dataset, cost_per_call=0.001)
    async with serve_in_loop(app) as server:
        model = OpenRouterModel(
            "anthropic/claude-sonnet-4",
            base_url=server.url + "/v1",
            api_key="x",
            retry=FAST,
            app_url="https://example.org",
        )
        body = model.request_body(conversation())
        headers = model.headers()
        reply = await model.query(conversation())
    assert body["usage"] == {"include": True} and body["model"] == "anthropic/claude-sonnet-4"
    assert headers["HTTP-Referer"] == "https://example.org" and headers["X-Title"] == "agentfleet"
    assert model.name == "openrouter/anthropic/claude-sonnet-4"
    assert reply.cost == pytest.approx(0.001)


def test_openrouter_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", "k")
    model = OpenRouterModel("openai/gpt-4o", sampling={"temperature": 0.0})
    assert model.url == "https://openrouter.ai/api/v1/chat/completions"
    assert model.headers()["Authorization"] == "Bearer k"
    assert model.request_body([])["temperature"] == 0.0


async def test_fifty_concurrent_models_share_one_pool(mini_dataset: str) -> None:
    """50 agents on one loop's pool with limits that bind (20 total, 10 per host): the
    mock sees at most 10 connections, all of them reused."""
    HttpPool.configure_default(PoolLimits(20, 10))  # reset after the test (conftest)
    app = create_mock_llm_app(dataset=mini_dataset, latency=0.05)
    async with serve_in_loop(app) as server:
        pool = HttpPool.for_loop()
        models = [model_for(server.url) for _ in range(50)]

        async def run(model: OpenAIChatModel) -> None:
            turns: list[str] = []
            for _ in range(5):
                turns.append((await model.query(conversation(*turns))).content)

        await asyncio.gather(*(run(m) for m in models))
        stats = await mock_stats(server.url)  # through the same pool
    assert all(m.pool is pool for m in models)
    assert pool.limits == PoolLimits(20, 10)
    assert stats["completions"] == 250
    assert 1 < stats["client_connections"] <= 10
    assert stats["peak_in_flight"] <= 10


def test_price_table(tmp_path: Path) -> None:
    table = PriceTable.default()
    assert table.cost("gpt-4o", 1_000_000, 0) == pytest.approx(2.5)
    assert table.lookup("openai/gpt-4o") == table["gpt-4o"]
    assert table.cost("meta-llama/llama-3-8b-instruct:free", 10**6, 10**6) == 0.0
    path = tmp_path / "prices.yaml"
    path.write_text("prices:\n  my-model: [1, 3]\n  other: {input: 0.5, output: 1.5}\n")
    loaded = PriceTable.from_yaml(path)
    assert loaded["my-model"] == Price(1.0, 3.0) and loaded["other"] == Price(0.5, 1.5)
    assert "gpt-4o" in loaded
    assert "gpt-4o" not in PriceTable.from_yaml(path, with_defaults=False)
    with pytest.raises(ValueError):
        PriceTable({"bad": "free"})


def test_retry_after_and_backoff() -> None:
    assert retry_after_from_headers({"Retry-After": "2"}) == 2.0
    assert retry_after_from_headers({"retry-after-ms": "250", "Retry-After": "2"}) == 0.25
    assert retry_after_from_headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_from_headers({"retry-after": "soon"}) is None
    assert retry_after_from_headers({}) is None
    policy = RetryPolicy(attempts=5, wait_min=1.0, wait_max=30.0)
    assert backoff_delay(policy, 1) == 1.0
    assert all(1.0 <= backoff_delay(policy, 3) <= 4.0 for _ in range(50))
    assert all(1.0 <= backoff_delay(policy, 20) <= 30.0 for _ in range(50))


async def test_relative_base_url_is_request_error() -> None:
    model = OpenAIChatModel("m", "localhost:8000/v1", api_key="x", retry=FAST)
    with pytest.raises(ModelError) as info:
        await model.query(conversation())
    assert info.value.exit_status == "ModelRequestError"


# -- odd but valid JSON in a reply --------------------------------------------------------
PRICED = PriceTable({"mock-oracle": (1.0, 2.0)})  # USD per million tokens


def fixed_reply_app(body: dict[str, Any]) -> FastAPI:
    """Answers every chat call with ``body`` (serialised as Python's json does: NaN too)."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        return Response(json.dumps(body), media_type="application/json")

    return app


def chat_reply(content: Any = "hi", **extra: Any) -> dict[str, Any]:
    return {"choices": [{"message": {"role": "assistant", "content": content}}], **extra}


@pytest.mark.parametrize(
    "body",
    [
        chat_reply(usage="n/a"),
        chat_reply(usage={"prompt_tokens": "n/a"}),
        chat_reply(usage={"completion_tokens": math.nan}),
        chat_reply(usage={"prompt_tokens": -5}),
        chat_reply(content=42),
        {"choices": []},
    ],
)
async def test_malformed_reply_is_a_model_error_and_counted_as_billed(body: dict[str, Any]) -> None:
    budget = RunBudget(None)
    async with serve_in_loop(fixed_reply_app(body)) as server:
        model = model_for(server.url, prices=PRICED, budget=budget)
        with pytest.raises(ModelError) as info:
            await model.query(conversation())
    assert info.value.exit_status == "ModelRequestError"
    assert model.stats.calls == 0 and model.stats.possibly_billed == 1  # it came, unread
    assert model.stats.possibly_billed_cost > 0 and budget.spent == model.stats.cost_bound


async def test_harmless_oddities_are_ignored() -> None:
    parts = [{"type": "text", "text": None}, {"type": "image_url"}, "x", {"text": "ok"}]
    async with serve_in_loop(fixed_reply_app(chat_reply(parts))) as server:
        reply = await model_for(server.url).query(conversation())
    assert reply.content == "ok"


@pytest.mark.parametrize("cost", [math.nan, math.inf, -1.0, "0.5", True])
async def test_unusable_cost_is_priced_from_tokens_and_limits_still_hold(cost: Any) -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 500, "cost": cost}
    budget = RunBudget(0.003)
    async with serve_in_loop(fixed_reply_app(chat_reply(usage=usage))) as server:
        model = model_for(server.url, prices=PRICED, cost_limit=0.0015, budget=budget)
        reply = await model.query(conversation())
        with pytest.raises(ModelError) as info:  # 0.002 spent: over the model's limit
            await model.query(conversation())
    assert reply.cost == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)
    assert info.value.exit_status == "CostLimitExceeded"
    assert budget.spent == pytest.approx(0.002) and not budget.exceeded


# -- a query cancelled in flight (the agent's time limit, Ctrl-C) ---------------------------


async def generated(url: str, at_least: int) -> int:
    """The mock's completions, once it made ``at_least`` (a stalled one ends late)."""
    for _ in range(100):
        made = int((await mock_stats(url))["completions"])
        if made >= at_least:
            break
        await asyncio.sleep(0.05)
    return made


async def test_query_cancelled_in_flight_is_counted_as_billed_and_stays_cancelled() -> None:
    app = create_mock_llm_app(dataset=None, stall_calls=2, stall_s=1.0)
    async with serve_in_loop(app) as server:
        budget = RunBudget(None)
        model = model_for(server.url, prices=PRICED, budget=budget, sampling={"max_tokens": 100})
        with pytest.raises(TimeoutError):  # a time limit around the call
            async with asyncio.timeout(0.3):
                await model.query(conversation())
        query = asyncio.create_task(model.query(conversation()))
        await asyncio.sleep(0.3)
        query.cancel()  # Ctrl-C
        with pytest.raises(asyncio.CancelledError):
            await query
        made = await generated(server.url, 2)
    assert made == 2  # the provider generated both: it may bill them
    assert model.stats.calls == 0 and model.stats.possibly_billed == 2
    assert model.stats.possibly_billed_cost > 0 and budget.spent == model.stats.cost_bound
    assert budget.calls == 2


async def test_query_cancelled_between_attempts_charges_the_lost_ones() -> None:
    app = create_mock_llm_app(dataset=None, error_rate=1.0, error_kinds=["drop"])
    async with serve_in_loop(app) as server:
        budget = RunBudget(None)
        slow_retry = RetryPolicy(attempts=3, wait_min=5.0, wait_max=5.0, budget_s=60)
        model = model_for(server.url, prices=PRICED, budget=budget, retry=slow_retry)
        with pytest.raises(TimeoutError):  # in the wait before the second attempt
            async with asyncio.timeout(1.0):
                await model.query(conversation())
    assert model.retries == 1 and model.stats.possibly_billed == 1  # the dropped answer
    assert model.stats.possibly_billed_cost > 0 and budget.spent == model.stats.cost_bound


async def test_agent_time_limit_during_a_call_counts_it(tmp_path: Path) -> None:
    app = create_mock_llm_app(dataset=None, stall_calls=1, stall_s=1.0, cost_per_call=1.0)
    async with serve_in_loop(app) as server:
        model = model_for(server.url, prices=PRICED)
        agent = LightAgent(
            model, ShellEnv(tmp_path), make_task(tmp_path), AgentConfig(time_limit_s=0.3)
        )
        result = await agent.run()
    assert result.exit_status == "TimeLimitExceeded"
    assert model.stats.possibly_billed == 1 and model.stats.cost_bound > 0
