"""What a failed LLM attempt may have cost, and whether it may be sent again.

An attempt that never reached the provider (connect refused, connect timeout) cost nothing
and is safe to repeat. One lost *after* the request left (the connection reset, the
answer timed out) may have been generated and billed: a repeat may be billed again. Such
attempts are counted (``possibly_billed``) at an estimated cost, and a read timeout (the
generation most likely ran to its end) is repeated only where the provider honours an
idempotency key.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from agentfleet.http.retry import is_connect_error
from agentfleet.models.base import ModelReply
from agentfleet.models.pricing import PriceTable

# Completion tokens assumed for a lost generation when the request sets no max_tokens
# and no reply came to compare with.
DEFAULT_LOST_COMPLETION_TOKENS = 4096
CHARS_PER_TOKEN = 4  # prompt size estimate when the provider never told us


class Loss(enum.Enum):
    NOT_SENT = "not_sent"  # never reached the provider: free to repeat
    CUT = "cut"  # the connection broke after the request left: may be billed
    READ_TIMEOUT = "read_timeout"  # no answer in time: the generation likely ran


def classify(exc: BaseException) -> Loss:
    """How a transport exception of one attempt (possibly an ``HttpError`` wrapping
    aiohttp's, as ``__cause__``) lost it."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if is_connect_error(cause):
        return Loss.NOT_SENT
    if isinstance(cause, aiohttp.ServerTimeoutError | TimeoutError):
        return Loss.READ_TIMEOUT
    return Loss.CUT


@dataclass
class LostAttempts:
    """The attempts of one query that may have been billed."""

    count: int = 0

    def estimate(
        self,
        prices: PriceTable,
        model: str,
        body: Mapping[str, Any],
        reply: ModelReply | None,
    ) -> float:
        """Estimated USD of the lost attempts, each priced as a whole generation: the
        request's ``max_tokens`` (else the reply's completion, else
        :data:`DEFAULT_LOST_COMPLETION_TOKENS`), at least the cost the provider reported
        for the reply."""
        if not self.count:
            return 0.0
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and limit > 0:
            completion = limit
        elif reply is not None:
            completion = reply.completion_tokens
        else:
            completion = DEFAULT_LOST_COMPLETION_TOKENS
        if reply is not None and reply.prompt_tokens:
            prompt = reply.prompt_tokens
        else:
            chars = sum(len(str(m.get("content") or "")) for m in body.get("messages") or ())
            prompt = chars // CHARS_PER_TOKEN + 1
        each = prices.cost(model, prompt, completion)
        if reply is not None:
            each = max(each, reply.cost)
        return each * self.count


__all__ = ["DEFAULT_LOST_COMPLETION_TOKENS", "Loss", "LostAttempts", "classify"]
