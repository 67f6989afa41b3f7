"""One background event loop per process for sync callers.

Sync code (``evaluate_info_sync``, ``RemoteDockerEnvironment.execute``, the mini-swe-agent
model adapter) runs its coroutines here, on a daemon thread that owns one event loop and so
one :class:`~agentfleet.http.HttpPool` (``HttpPool.for_loop()`` on that loop): N threads
share that pool's connections instead of opening one loop and one connection each.

Started lazily by the first :func:`run_sync`, closed at exit (the pool first, then the
loop); a forked child starts its own. ``asyncio.run(...)`` in a thread keeps working too:
it gets its own loop and pool, as before.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from agentfleet.http.pool import HttpPool

T = TypeVar("T")

__all__ = ["BackgroundLoop", "background_loop", "defer", "run_sync", "shutdown"]


class BackgroundLoop:
    """An event loop running forever on its own daemon thread."""

    def __init__(self, name: str = "agentfleet-background") -> None:
        self.name = name
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._closed = False
        self._deferred: set[concurrent.futures.Future[Any]] = set()
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._ready.set)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def closed(self) -> bool:
        return self._closed

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; its future, for any thread to wait on."""
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self.name} is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def defer(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` on the loop without waiting for it (clean-ups from ``__del__``);
        :meth:`close` waits for what is still running, briefly. Dropped once closed."""
        try:
            future = self.submit(coro)
        except RuntimeError:
            return
        self._deferred.add(future)
        future.add_done_callback(self._deferred.discard)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (from any other thread).
        An interrupted wait (Ctrl-C, ``timeout``) cancels the coroutine."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError(f"run() called on {self.name}'s own thread: it would deadlock")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def pool(self) -> HttpPool:
        """The loop's shared pool (made on first use)."""
        return self.run(_for_loop())

    def close(self, timeout: float = 10.0) -> None:
        """Close the loop's pool, then stop the loop and join its thread. Idempotent."""
        if self._closed:
            return
        if not self.in_loop_thread():
            concurrent.futures.wait(list(self._deferred), timeout)
            try:
                self.run(_close_pool(), timeout)
            except Exception:  # closing at exit: nothing more to do about it
                pass
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        if not self.in_loop_thread():
            self._thread.join(timeout)


async def _for_loop() -> HttpPool:
    return HttpPool.for_loop()


async def _close_pool() -> None:
    await HttpPool.for_loop().aclose()


_lock = threading.Lock()
_current: tuple[int, BackgroundLoop] | None = None  # (pid that started it, the loop)
_exiting = False  # set at interpreter exit: no loop is started any more for defer()


def background_loop() -> BackgroundLoop:
    """The process's background loop, started on first use (again after a fork)."""
    global _current
    with _lock:
        if _current is None or _current[0] != os.getpid() or _current[1].closed:
            _current = (os.getpid(), BackgroundLoop())
        return _current[1]


def run_sync(
    coro: Coroutine[Any, Any, T], *, what: str = "this call", timeout: float | None = None
) -> T:
    """Run ``coro`` on the process's background loop and return its result.

    For sync callers only: from inside a running event loop it raises ``RuntimeError``
    (waiting here would block that loop; ``await`` the coroutine there instead)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise RuntimeError(
            f"{what} was called inside a running event loop, which it would block; "
            "await its async form there"
        )
    return background_loop().run(coro, timeout)


def defer(coro: Coroutine[Any, Any, Any]) -> None:
    """Run ``coro`` on the background loop without waiting (:meth:`BackgroundLoop.defer`);
    dropped at interpreter exit, when no loop may start any more."""
    if _exiting or sys.is_finalizing():
        coro.close()
        return
    background_loop().defer(coro)


def _at_exit() -> None:
    global _exiting
    _exiting = True
    shutdown()


def shutdown() -> None:
    """Close the background loop and its pool, if one was started in this process."""
    global _current
    with _lock:
        current, _current = _current, None
    if current is not None and current[0] == os.getpid():
        current[1].close()


atexit.register(_at_exit)
