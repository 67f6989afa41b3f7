"""Long-held requests of the evaluation clients (waiting submits and long polls), counted
per pool so that they never take all of a host's connection slots."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentfleet.http.pool import HttpPool

__all__ = ["LongCalls", "long_calls"]


class LongCalls:
    """Long-held requests of the evaluation clients of each pool (waiting submits and long
    polls). A submit asks the server to wait only while the pool has a long-poll slot free
    for it (:meth:`HttpPool.long_poll_slots`); otherwise it is sent plain, starts its job
    at once, and its poll queues for a slot instead of the submit."""

    def __init__(self) -> None:
        self._held: weakref.WeakKeyDictionary[HttpPool, int] = weakref.WeakKeyDictionary()

    @asynccontextmanager
    async def hold(
        self, pool: HttpPool, wait: float, *, always: bool = False
    ) -> AsyncIterator[float]:
        """Yields the wait to ask for: ``wait``, or 0 when the pool's long-poll slots are all
        taken (unless ``always``: a poll counts, and queues, anyway)."""
        if wait <= 0:
            yield 0.0
            return
        held = self._held.get(pool, 0)
        if not always and held >= pool.long_poll_slots():
            yield 0.0
            return
        self._held[pool] = held + 1
        try:
            yield wait
        finally:
            self._held[pool] = self._held.get(pool, 1) - 1


long_calls = LongCalls()
