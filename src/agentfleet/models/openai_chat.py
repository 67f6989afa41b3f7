"""Models served over an OpenAI-compatible ``/chat/completions`` API (OpenAI, OpenRouter,
vLLM, the mock LLM server...), called through the event loop's shared :class:`HttpPool`."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any, TypeGuard

import aiohttp

from agentfleet.http import (
    LLM_TIMEOUTS,
    NO_RETRY,
    HttpError,
    HttpPool,
    HttpStatusError,
    Response,
    RetryPolicy as RetryPolicy,
    Timeouts,
)
from agentfleet.http.retry import backoff_delay, retry_after_from_headers
from agentfleet.models.base import LimitReached, Message, ModelError, ModelReply, ModelStats
from agentfleet.models.billing import Loss, LostAttempts, classify
from agentfleet.models.pricing import PriceTable, RunBudget
from agentfleet.models.tool_calls import BASH_TOOL, ActionFormat, check_action_format

log = logging.getLogger(__name__)

# The model is the only retry layer (the pool gets NO_RETRY): at most ``attempts`` HTTP
# requests per query; between them Retry-After (up to MAX_RETRY_AFTER_S) or exponential
# backoff with jitter in [wait_min, wait_max]; no wait that would end past ``budget_s``
# after the query started. A read timeout is not retried unless the provider honours an
# idempotency key (``idempotency_header``); attempts lost after the request left, or
# cancelled in flight, are counted as possibly billed (models.billing).
DEFAULT_LLM_RETRY = RetryPolicy(attempts=5, wait_min=1.0, wait_max=30.0, budget_s=900.0)
MAX_RETRY_AFTER_S = 120.0  # a server asking to wait longer than this is treated as down

RETRYABLE_4XX = frozenset({408, 409, 425, 429})


def is_retryable_status(status: int) -> bool:
    """429 (rate limited), other transient 4xx, and every 5xx."""
    return status in RETRYABLE_4XX or status >= 500


_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "context window",
    "too many tokens",
    "prompt is too long",
)

_default_prices: PriceTable | None = None


def default_prices() -> PriceTable:
    global _default_prices
    if _default_prices is None:
        _default_prices = PriceTable.default()
    return _default_prices


class _Retryable(Exception):
    """One attempt failed in a way worth repeating (after ``wait`` s when the server says)."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


def _error_detail(body: Any, fallback: str) -> tuple[str, str]:
    """(code, message) of an OpenAI-style ``{"error": {...}}`` body."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            code = str(err.get("code") or err.get("type") or "")
            message = str(err.get("message") or fallback)
            return code, message
        if isinstance(err, str):
            return "", err
    return "", fallback


class OpenAIChatModel:
    """A model behind an OpenAI-compatible chat completions API.

    ``base_url`` is the API root that ends in ``/v1`` (``https://api.openai.com/v1``,
    ``http://127.0.0.1:8000/v1``); the model POSTs ``{base_url}/chat/completions``.

    ``idempotency_header``: a header the provider honours as an idempotency key (e.g.
    ``"Idempotency-Key"``); sent with one key per query, it makes a read timeout safe to
    retry. Without it (the default) a read timeout ends the query (``ModelTimeout``).
    ``timeouts``: of each HTTP attempt (default ``LLM_TIMEOUTS``).
    ``action_format``: ``"text"`` (the command in a fenced block of the reply) or
    ``"tool_call"`` (requests carry the ``bash`` tool; replies' ``tool_calls`` are kept).
    """

    default_api_key_env = "OPENAI_API_KEY"

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key_env: str | None = None,
        api_key: str | None = None,
        sampling: Mapping[str, Any] | None = None,
        pool: HttpPool | None = None,
        retry: RetryPolicy | None = None,
        prices: PriceTable | None = None,
        cost_limit: float | None = None,
        budget: RunBudget | None = None,
        extra_headers: Mapping[str, str] | None = None,
        name: str | None = None,
        seed: int | None = None,
        idempotency_header: str | None = None,
        timeouts: Timeouts = LLM_TIMEOUTS,
        action_format: ActionFormat = "text",
    ) -> None:
        self.model = model
        self.idempotency_header = idempotency_header
        self.timeouts = timeouts
        self.name = name or model
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.api_key_env = api_key_env or self.default_api_key_env
        self.api_key = api_key if api_key is not None else os.environ.get(self.api_key_env)
        self.sampling: dict[str, Any] = dict(sampling or {})
        self._pool = pool
        self.retry = retry or DEFAULT_LLM_RETRY
        self.prices = prices if prices is not None else default_prices()
        self.cost_limit = cost_limit
        self.budget = budget
        self.extra_headers: dict[str, str] = dict(extra_headers or {})
        self.stats = ModelStats()
        self.retries = 0  # attempts beyond the first, over all queries
        self._rng = random.Random(seed)
        self.action_format = check_action_format(action_format)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r}, {self.base_url!r})"

    # request -------------------------------------------------------------------------
    @property
    def pool(self) -> HttpPool:
        return self._pool if self._pool is not None else HttpPool.for_loop()

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(self.extra_headers)
        return headers

    def request_body(self, messages: list[Message]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in messages]}
        if self.action_format == "tool_call":
            body["tools"] = [BASH_TOOL]
        body.update(self.sampling)
        body["stream"] = False
        return body

    # Model protocol ------------------------------------------------------------------
    async def query(self, messages: list[Message]) -> ModelReply:
        self._check_limits()
        body = self.request_body(messages)
        lost = LostAttempts()
        try:
            data = await self._post_with_retries(body, lost)
            try:
                reply = self._parse(data)
            except ModelError:  # a reply came (and was likely billed) but cannot be read
                lost.count += 1
                raise
        except (ModelError, asyncio.CancelledError):  # cancelled: the time limit, Ctrl-C
            self._charge_lost(lost, body)  # what the lost attempts may have cost
            raise
        reply.possibly_billed = lost.count
        reply.possibly_billed_cost = lost.estimate(self.prices, self.model, body, reply)
        self.stats.add(reply)
        if self.budget is not None:  # conservative: what may have been billed
            self.budget.charge(reply.cost + reply.possibly_billed_cost)
        return reply

    def _charge_lost(self, lost: LostAttempts, body: dict[str, Any]) -> None:
        if not lost.count:
            return
        cost = lost.estimate(self.prices, self.model, body, None)
        self.stats.possibly_billed += lost.count
        self.stats.possibly_billed_cost += cost
        if self.budget is not None:
            self.budget.charge(cost)

    def _check_limits(self) -> None:
        if self.cost_limit is not None and self.stats.cost_bound >= self.cost_limit:
            raise LimitReached(
                f"model {self.name!r} spent ${self.stats.cost_bound:.4f}, "
                f"reaching its cost limit ${self.cost_limit:.4f}",
                "CostLimitExceeded",
            )
        if self.budget is not None and self.budget.exceeded:
            raise LimitReached(
                f"the run spent ${self.budget.spent:.4f}, "
                f"reaching its total cost limit ${self.budget.total_cost_limit}",
                "RunCostLimitExceeded",
            )

    async def _post_with_retries(self, body: dict[str, Any], lost: LostAttempts) -> Any:
        policy = self.retry
        attempts = max(1, policy.attempts)
        deadline = time.monotonic() + policy.budget_s
        last = "no attempt made"
        headers = self.headers()
        if self.idempotency_header:  # one key for every attempt of this query
            headers[self.idempotency_header] = uuid.uuid4().hex
        for attempt in range(1, attempts + 1):
            try:
                return await self._attempt(body, headers, lost)
            except _Retryable as exc:
                last = str(exc)
                if attempt == attempts:
                    break
                wait = (
                    exc.wait if exc.wait is not None else backoff_delay(policy, attempt, self._rng)
                )
                if wait > MAX_RETRY_AFTER_S:
                    last += f" (asked to wait {wait:.1f} s, over {MAX_RETRY_AFTER_S:g} s)"
                    break
                if time.monotonic() + wait > deadline:
                    last += f" (next retry in {wait:.1f} s would exceed the retry budget)"
                    break
                log.info(
                    "%s: attempt %d/%d failed (%s); retrying in %.2f s",
                    self.name,
                    attempt,
                    attempts,
                    last,
                    wait,
                )
                self.retries += 1
                await asyncio.sleep(wait)
        raise ModelError(
            f"model {self.name!r} at {self.url} unavailable after {attempt} attempt(s): {last}",
            "ModelUnavailable",
        )

    async def _attempt(
        self, body: dict[str, Any], headers: dict[str, str], lost: LostAttempts
    ) -> Any:
        try:
            response = await self.pool.request(
                "POST",
                self.url,
                json=body,
                headers=headers,
                timeout=self.timeouts,
                idempotent=True,  # repeats are decided below (billing), not by the pool
                retry=NO_RETRY,  # the only retry layer is _post_with_retries
            )
        except HttpStatusError as exc:
            response = exc.response
        except asyncio.CancelledError:  # the request may have left: counted, not swallowed
            lost.count += 1
            raise
        except (HttpError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._lost(exc, lost) from exc
        except ValueError as exc:  # e.g. a base URL that is not absolute
            raise ModelError(
                f"model {self.name!r}: bad request to {self.url!r}: {exc}", "ModelRequestError"
            ) from exc
        return self._check_response(response)

    def _lost(self, exc: BaseException, lost: LostAttempts) -> Exception:
        """The error for an attempt lost on the way: retryable unless it is a read timeout
        without an idempotency key; counted when the provider may have billed it."""
        what = f"{type(exc).__name__}: {exc}".rstrip(": ")
        loss = classify(exc)
        keyed = self.idempotency_header is not None
        if loss is not Loss.NOT_SENT and not keyed:  # a keyed repeat is not billed again
            lost.count += 1
        if loss is Loss.READ_TIMEOUT and not keyed:
            return ModelError(
                f"model {self.name!r} at {self.url}: no answer in time ({what}); not "
                "retried: the provider may have generated (and billed) it already, and "
                "a repeat would be billed again (set idempotency_header if the API "
                "honours one)",
                "ModelTimeout",
            )
        return _Retryable(what)

    def _check_response(self, response: Response) -> Any:
        status = response.status
        try:
            data: Any = response.json()
        except ValueError:
            data = None
        if status < 300:
            if not isinstance(data, dict):
                raise _Retryable(
                    f"HTTP {status} with a body that is not JSON: {response.text()[:200]}"
                )
            if "choices" not in data and "error" in data:
                # OpenRouter reports upstream failures as 200 + {"error": {...}}.
                code, message = _error_detail(data, "")
                if code.isdigit() and not is_retryable_status(int(code)):
                    self._raise_fatal(int(code), code, message)
                raise _Retryable(f"provider error {code}: {message}")
            return data
        code, message = _error_detail(data, response.text()[:500] or f"HTTP {status}")
        if is_retryable_status(status):
            raise _Retryable(
                f"HTTP {status}: {message[:300]}", retry_after_from_headers(response.headers)
            )
        self._raise_fatal(status, code, message)

    def _raise_fatal(self, status: int, code: str, message: str) -> Any:
        text = f"{code} {message}".lower()
        where = f"model {self.name!r} at {self.url}"
        if status == 413 or (
            status in {400, 422} and any(marker in text for marker in _CONTEXT_MARKERS)
        ):
            raise ModelError(
                f"{where}: the conversation no longer fits the context window: {message}",
                "ContextLengthExceeded",
            )
        if status in {401, 403}:
            hint = "" if self.api_key else f" (no API key: set ${self.api_key_env})"
            raise ModelError(
                f"{where}: HTTP {status} authentication failed{hint}: {message}",
                "ModelAuthError",
            )
        if status == 404:
            raise ModelError(
                f"{where}: HTTP 404 (unknown model or wrong base URL?): {message}",
                "ModelRequestError",
            )
        raise ModelError(f"{where}: HTTP {status} request rejected: {message}", "ModelRequestError")

    # response ------------------------------------------------------------------------
    def _parse(self, data: dict[str, Any]) -> ModelReply:
        """The reply of a chat completion; ModelError when a part it needs is malformed
        (parts it can do without are ignored: text-less content parts, a cost that is not
        a finite non-negative number, which is then priced from the tokens)."""
        try:
            message = data["choices"][0]["message"]
        except (KeyError, IndexError, TypeError) as exc:
            raise self._bad_reply("without choices[0].message", data) from exc
        content = message.get("content") if isinstance(message, dict) else None
        if content is None:
            content = ""
        elif isinstance(content, list):  # content parts: their texts
            texts = (part.get("text") for part in content if isinstance(part, dict))
            content = "".join(text for text in texts if isinstance(text, str))
        elif not isinstance(content, str):
            raise self._bad_reply("whose content is neither text nor parts", content)
        usage = data.get("usage")
        if usage is None:
            usage = {}
        elif not isinstance(usage, dict):
            raise self._bad_reply("whose usage is not an object", usage)
        prompt_tokens = self._tokens(usage, "prompt_tokens")
        completion_tokens = self._tokens(usage, "completion_tokens")
        reported = usage.get("cost")
        if _is_number(reported) and math.isfinite(reported) and reported >= 0:
            cost = float(reported)
        else:  # none, or one that would count as NaN or a refund: priced from the tokens
            cost = self.prices.cost(self.model, prompt_tokens, completion_tokens)
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        tool_calls = list(calls) if isinstance(calls, list) else None
        return ModelReply(content, prompt_tokens, completion_tokens, cost, tool_calls=tool_calls)

    def _tokens(self, usage: dict[str, Any], key: str) -> int:
        value = usage.get(key)
        if value is None:
            return 0
        try:
            count = int(value) if _is_number(value) or isinstance(value, str) else -1
        except (ValueError, OverflowError):  # "n/a", NaN, infinity
            count = -1
        if count < 0:
            raise self._bad_reply(f"whose usage.{key} is not a count", value)
        return count

    def _bad_reply(self, what: str, part: Any) -> ModelError:
        return ModelError(
            f"model {self.name!r}: reply {what}: {str(part)[:300]}", "ModelRequestError"
        )


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


class OpenRouterModel(OpenAIChatModel):
    """A model on OpenRouter (``https://openrouter.ai``): key in ``$OPENROUTER_API_KEY``,
    cost of each call reported by the server (``usage: {include: true}``)."""

    default_api_key_env = "OPENROUTER_API_KEY"
    DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        *,
        app_url: str | None = None,
        app_title: str | None = "agentfleet",
        **kwargs: Any,
    ) -> None:
        headers: dict[str, str] = {}
        if app_url:
            headers["HTTP-Referer"] = app_url
        if app_title:
            headers["X-Title"] = app_title
        headers.update(kwargs.pop("extra_headers", None) or {})
        kwargs.setdefault("name", f"openrouter/{model}")
        super().__init__(model, base_url or self.DEFAULT_BASE_URL, extra_headers=headers, **kwargs)

    def request_body(self, messages: list[Message]) -> dict[str, Any]:
        body = super().request_body(messages)
        body.setdefault("usage", {"include": True})
        return body
