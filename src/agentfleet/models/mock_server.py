"""An OpenAI-compatible mock LLM server that answers like the oracle, with fault injection.

It recognises the task in the conversation (by the task's prompt text, else its id), counts
the assistant messages already there to know the step, and answers
``oracle_replies(task)[step]`` (then keeps answering the submit reply). A request that
offers the ``bash`` tool gets the reply as a ``tool_calls`` answer (tool-call mode), else as
text. Latency, 429/500 errors, dropped connections and malformed tool calls can be
injected; ``GET /stats`` and ``GET /metrics`` tell what the server saw (calls, injected
errors, in flight, distinct client connections).

Run it with ``agentfleet mock-llm --port 8000`` or in-process with
``serving.serve_in_loop(create_mock_llm_app(...))``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from agentfleet.models.mock_state import (  # noqa: F401 (re-exported)
    DEFAULT_MODEL_NAMES,
    ERROR_KINDS,
    ErrorKind,
    LatencyDist,
    MockConfig,
    MockLLM,
    MockStats,
    content_text,
)
from agentfleet.models.mock_tasks import (
    UNKNOWN_TASK_REPLY as UNKNOWN_TASK_REPLY,
    TaskIndex as TaskIndex,
)
from agentfleet.models.mock_tools import (
    as_tool_calls,
    completion_text,
    malformed_tool_calls,
    wants_tool_calls,
)
from agentfleet.models.offline import SUBMIT_SENTINEL as SUBMIT_SENTINEL
from agentfleet.tasks import DEFAULT_DATASET

log = logging.getLogger(__name__)

TRIGGER_CONTEXT_LENGTH = "TRIGGER_CONTEXT_LENGTH"
_RAW_SEND = "agentfleet.raw_send"


def _words(text: str) -> int:
    return len(text.split())


def _error_body(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


# dropping a connection -----------------------------------------------------------------
def _drop_connection(raw_send: Any) -> bool:
    """Close the client's TCP connection without a response (uvicorn's protocol cycles keep
    the transport on the ``send`` callable's object). False when the server is not uvicorn."""
    cycle: Any = getattr(raw_send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None or not hasattr(transport, "close"):
        return False
    transport.close()
    if hasattr(cycle, "disconnected"):
        cycle.disconnected = True  # uvicorn then neither answers 500 nor logs an error
    return True


class _DropResponse(Response):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _drop_connection(scope.get(_RAW_SEND)):
            return
        fallback = JSONResponse(
            _error_body("connection drop injected (not supported by this server)", "server_error"),
            status_code=502,
        )
        await fallback(scope, receive, send)


class _MockApp(FastAPI):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[_RAW_SEND] = send
        await super().__call__(scope, receive, send)


# the app -------------------------------------------------------------------------------
def create_mock_llm_app(
    *,
    dataset: str | None = DEFAULT_DATASET,
    latency: float | tuple[float, float] = 0.0,
    latency_dist: LatencyDist | None = None,
    error_rate: float = 0.0,
    error_kinds: Iterable[str] = ERROR_KINDS,
    malformed_rate: float = 0.0,
    seed: int | None = None,
    retry_after: float = 0.0,
    cost_per_call: float | None = None,
    report_usage: bool = True,
    require_key: str | None = None,
    context_limit_words: int | None = None,
    model_names: Sequence[str] = DEFAULT_MODEL_NAMES,
    stall_calls: int = 0,
    stall_s: float = 0.0,
) -> FastAPI:
    """The mock LLM as a FastAPI app; the dataset (a bundled name or a folder) loads at startup.

    ``latency`` (s): a number or a ``(low, high)`` range, drawn per ``latency_dist``
    (default: fixed for a number, uniform for a range). ``error_rate`` of the chat calls
    fail with a kind drawn from ``error_kinds``: ``429`` (with ``Retry-After:
    retry_after``), ``500``, ``drop`` (connection closed without a response). In tool-call
    mode (the request offers the ``bash`` tool) ``malformed_rate`` of the replies carry a
    malformed call instead (arguments that are not JSON, or an unknown tool).
    ``cost_per_call`` adds OpenRouter-style ``usage.cost``. ``require_key``: answer 401 to
    any other bearer key. A message containing ``TRIGGER_CONTEXT_LENGTH``, or more than
    ``context_limit_words`` words, gets OpenAI's 400 ``context_length_exceeded``. The first
    ``stall_calls`` chat calls stall ``stall_s`` seconds more, then answer (a client that
    gave up by then misses a completion the server made: ``completions`` counts it).
    """
    config = MockConfig(
        dataset=dataset,
        latency=latency,
        latency_dist=latency_dist,
        error_rate=error_rate,
        error_kinds=tuple(error_kinds),
        malformed_rate=malformed_rate,
        seed=seed,
        retry_after=retry_after,
        cost_per_call=cost_per_call,
        report_usage=report_usage,
        require_key=require_key,
        context_limit_words=context_limit_words,
        model_names=tuple(model_names) or DEFAULT_MODEL_NAMES,
        stall_calls=stall_calls,
        stall_s=stall_s,
    )
    mock = MockLLM(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await mock.load()
        yield

    app = _MockApp(title="agentfleet mock LLM", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.mock = mock

    def unauthorised() -> JSONResponse:
        mock.stats.rejected["auth"] += 1
        return JSONResponse(
            _error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
            status_code=401,
        )

    def bad_request(message: str, code: str | None = None) -> JSONResponse:
        mock.stats.rejected[
            "context_length" if code == "context_length_exceeded" else "bad_request"
        ] += 1
        return JSONResponse(_error_body(message, "invalid_request_error", code), status_code=400)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "dataset": mock.index.dataset, "tasks": len(mock.index.tasks)}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return mock.stats.as_dict()

    @app.post("/stats/reset")
    async def reset_stats() -> dict[str, Any]:
        mock.reset_stats()
        return mock.stats.as_dict()

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(mock.metrics_text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    @app.get("/models", include_in_schema=False)
    async def models(request: Request) -> Response:
        if not mock.authorised(request):
            return unauthorised()
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "agentfleet"}
            for name in config.model_names
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions", include_in_schema=False)
    async def chat_completions(request: Request) -> Response:
        s = mock.stats
        s.calls += 1
        if request.client is not None:
            s.clients.add((request.client.host, request.client.port))
        s.in_flight += 1
        s.peak_in_flight = max(s.peak_in_flight, s.in_flight)
        try:
            return await _chat(request)
        finally:
            mock.stats.in_flight -= 1

    async def _chat(request: Request) -> Response:
        if not mock.authorised(request):
            return unauthorised()
        try:
            body = json.loads(await request.body())
        except ValueError:
            return bad_request("We could not parse the JSON body of your request.")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            return bad_request("'messages' must be a non-empty list.")
        text = "\n".join(content_text(m.get("content")) for m in messages if isinstance(m, dict))
        prompt_tokens = _words(text)
        if TRIGGER_CONTEXT_LENGTH in text or (
            config.context_limit_words is not None and prompt_tokens > config.context_limit_words
        ):
            limit = config.context_limit_words or 0
            return bad_request(
                f"This model's maximum context length is {limit} tokens. However, your "
                f"messages resulted in {prompt_tokens} tokens. Please reduce the length "
                "of the messages.",
                "context_length_exceeded",
            )

        error = mock.pick_error()
        if error == "429":
            mock.stats.errors["429"] += 1
            return JSONResponse(
                _error_body(
                    "Rate limit reached (injected by the mock).", "requests", "rate_limit_exceeded"
                ),
                status_code=429,
                headers={"Retry-After": f"{config.retry_after:g}"},
            )
        delay = config.sample_latency(mock.rng)
        if mock.stats.calls <= config.stall_calls:
            delay += config.stall_s
        if delay > 0:
            await asyncio.sleep(delay)
        if error == "500":
            mock.stats.errors["500"] += 1
            return JSONResponse(
                _error_body("The server had an error (injected by the mock).", "server_error"),
                status_code=500,
            )
        if error == "drop":
            mock.stats.errors["drop"] += 1
            return _DropResponse()

        content, _task_id = mock.answer(messages)
        tool_calls = None
        if wants_tool_calls(body):
            mock.stats.tool_call_replies += 1
            if config.malformed_rate > 0 and mock.rng.random() < config.malformed_rate:
                kind, content, tool_calls = malformed_tool_calls(content, mock.rng)
                mock.stats.malformed[kind] += 1
            else:
                content, tool_calls = as_tool_calls(content)
        completion_tokens = _words(completion_text(content, tool_calls))
        mock.stats.completions += 1
        mock.stats.prompt_tokens += prompt_tokens
        mock.stats.completion_tokens += completion_tokens
        model = str(body.get("model") or config.model_names[0])
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if config.cost_per_call is not None:
            usage["cost"] = config.cost_per_call
        ident = f"chatcmpl-mock-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.get("stream") and tool_calls is None:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                _sse(ident, created, model, content, usage if include_usage else None),
                media_type="text/event-stream",
            )
        reply: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": _message(content, tool_calls),
                    "finish_reason": "stop" if tool_calls is None else "tool_calls",
                    "logprobs": None,
                }
            ],
        }
        if config.report_usage:
            reply["usage"] = usage
        return JSONResponse(reply)

    return app


def _message(content: str, tool_calls: list[dict[str, Any]] | None) -> dict[str, Any]:
    if tool_calls is None:
        return {"role": "assistant", "content": content}
    return {"role": "assistant", "content": content or None, "tool_calls": tool_calls}


async def _sse(
    ident: str, created: int, model: str, content: str, usage: dict[str, Any] | None
) -> AsyncIterator[str]:
    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        data = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(data)}\n\n"

    yield chunk(
        [{"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": None}]
    )
    yield chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    if usage is not None:
        yield chunk([], usage=usage)
    yield "data: [DONE]\n\n"


def run_mock_llm(
    host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info", **opts: Any
) -> None:
    """Serve the mock LLM until interrupted (blocking; the CLI's ``agentfleet mock-llm``).
    ``opts`` are :func:`create_mock_llm_app`'s options."""
    import uvicorn

    from agentfleet.serving import uvicorn_config

    app = create_mock_llm_app(**opts)
    app.state.mock.load_sync()  # a bad dataset fails here, with a clear message
    uvicorn.Server(uvicorn_config(app, host, port, log_level=log_level)).run()
