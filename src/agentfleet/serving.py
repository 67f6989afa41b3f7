"""Serving and stopping: a FastAPI/ASGI app with uvicorn, inside the current event loop or
as the whole program, and the one rule for SIGINT / SIGTERM.

Stopping: SIGTERM (what ``timeout``, systemd, Kubernetes and Slurm send) is a graceful stop
exactly like SIGINT (Ctrl-C). ``agentfleet run`` runs its loops with :func:`run_async`
(the main task is cancelled, so every ``finally`` runs and every sandbox is deleted, then
:class:`Stopped` is raised) inside :func:`graceful_stop`; the servers let uvicorn shut down
(lifespan cleanup included) and report the signal (:func:`serve_until_signal`). Every
command then exits with ``128 + signal``: 130 after SIGINT, 143 after SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

import uvicorn

T = TypeVar("T")
log = logging.getLogger("agentfleet.serving")

# Longer than the client pool's idle keep-alive (aiohttp: 15 s): no reuse race.
SERVER_KEEPALIVE_S = 75
BEFORE_STOP_TIMEOUT_S = 30.0
# after a failed start-up, how long the threads it left may keep the finished program alive
LEFT_THREADS_GRACE_S = 2.0


def uvicorn_config(app: Any, host: str, port: int, **kw: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=kw.pop("log_level", "warning"),
        timeout_keep_alive=SERVER_KEEPALIVE_S,
        lifespan="on",
        backlog=4096,
        # asyncio, not uvloop: once 2 ms slower per sandbox exec (libuv's spawn; the process
        # backend spawns with Popen now); one loop everywhere (docs/benchmarks.md, History).
        loop=kw.pop("loop", "asyncio"),
        **kw,
    )


class _DrainingServer(uvicorn.Server):
    """A uvicorn server that, as it closes, first calls its app's ``app.state.drain()`` if
    the app has one: the app's long polls answer at once, instead of holding the shutdown
    for ``timeout_graceful_shutdown`` and then being cancelled (a 500 and a traceback)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        drain = getattr(getattr(self.config.app, "state", None), "drain", None)
        if callable(drain):
            try:
                drain()
            except Exception:  # close anyway
                log.exception("draining the app failed")
        # no await in between: the listener closes before a woken long poll answers
        await super().shutdown(sockets)


class EmbeddedServer(_DrainingServer):
    """A uvicorn server that leaves signal handling to its host program."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class RunningServer:
    host: str
    port: int
    server: uvicorn.Server

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@asynccontextmanager
async def serve_in_loop(
    app: Any, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningServer]:
    """Serve ``app`` in this loop until the block exits (port 0: a free port)."""
    # IPPROTO_TCP (not 0) so asyncio sets TCP_NODELAY on accepted sockets: no 40 ms Nagle stalls.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    server = EmbeddedServer(uvicorn_config(app, host, sock.getsockname()[1]))
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"uvicorn:{host}")
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.01)
        yield RunningServer(host, sock.getsockname()[1], server)
    finally:
        server.should_exit = True
        try:
            await task
        finally:
            sock.close()


class Stopped(KeyboardInterrupt):
    """A graceful stop asked for by ``signum`` (SIGINT or SIGTERM); exit with ``exit_code``."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(exc: KeyboardInterrupt) -> int:
    """The exit status for an interrupt: 128 + its signal (130 for a plain Ctrl-C)."""
    return exc.exit_code if isinstance(exc, Stopped) else 128 + signal.SIGINT


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, where SIGTERM is a graceful stop as SIGINT (Ctrl-C) is.

    The first SIGTERM, or SIGINT unless the process ignores it, cancels ``main``; once its
    ``finally`` blocks and ``async with`` exits have run, :class:`Stopped` is raised with
    that signal. A second signal raises :class:`Stopped` at once (as a second Ctrl-C does
    in ``asyncio.run``). Outside the main thread signals are left alone.
    """
    with asyncio.Runner() as runner:
        loop = runner.get_loop()
        task = loop.create_task(main)
        stops: list[int] = []

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stops.append(signum)
            if len(stops) == 1 and not task.done():
                task.cancel()
                loop.call_soon_threadsafe(lambda: None)  # wake the selector
                return
            raise Stopped(signum)

        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_signal)
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                previous[signal.SIGINT] = signal.signal(signal.SIGINT, on_signal)
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if stops:
                raise Stopped(stops[0]) from None
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


@contextlib.contextmanager
def graceful_stop() -> Iterator[None]:
    """Inside the block, SIGTERM interrupts like SIGINT, and any interrupt leaves the block
    as :class:`Stopped` naming its signal. For the sync parts of a program whose event loops
    run with :func:`run_async` (which stops them gracefully). Main thread only; elsewhere
    the block runs with the handlers as they are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise Stopped(signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except Stopped:
        raise
    except KeyboardInterrupt as exc:  # Ctrl-C outside run_async
        raise Stopped(signal.SIGINT) from exc
    finally:
        signal.signal(signal.SIGTERM, previous)


class _SignalledServer(_DrainingServer):
    """uvicorn's server, which on SIGINT / SIGTERM shuts down gracefully (lifespan included)
    and then reports the signal instead of raising it again. ``before_stop`` runs first,
    while the server still serves (a second signal does not wait for it)."""

    stopped_by: int | None = None

    def __init__(
        self, config: uvicorn.Config, before_stop: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        super().__init__(config)
        self._before_stop = before_stop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.stopped_by is None:
            self.stopped_by = sig
        if self._before_stop is not None and self._loop is not None and not self._stopping:
            self._stopping = True
            self._loop.call_soon_threadsafe(self._loop.create_task, self._stop_after(sig))
            return
        super().handle_exit(sig, frame)

    async def _stop_after(self, sig: int) -> None:
        assert self._before_stop is not None
        try:
            async with asyncio.timeout(BEFORE_STOP_TIMEOUT_S):
                await self._before_stop()
        except Exception as exc:  # stop anyway
            log.warning("before the server's stop: %s: %s", type(exc).__name__, exc)
        super().handle_exit(sig, None)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve_until_signal(
    config: uvicorn.Config, before_stop: Callable[[], Awaitable[None]] | None = None
) -> int | None:
    """Serve ``config`` until SIGINT or SIGTERM (blocking); return that signal's number
    after the graceful shutdown (``None`` if the server stopped by itself). On the signal,
    ``before_stop()`` runs first (``BEFORE_STOP_TIMEOUT_S`` at most) while the server
    still listens: for clients that must talk to it to stop (remote workers handing their
    jobs back). A failed start-up raises uvicorn's ``SystemExit(3)``; threads it left
    running (e.g. an unclosed aiosqlite connection's) then do not hold the exit."""
    server = _SignalledServer(config, before_stop)
    threads_before = set(threading.enumerate())
    try:
        server.run()
    except BaseException as exc:  # uvicorn exits 3 after a failed lifespan start-up
        if not server.started:
            code = exc.code if isinstance(exc, SystemExit) else 1
            _exit_despite_threads(set(threading.enumerate()) - threads_before, code)
        raise
    return server.stopped_by


def _exit_despite_threads(threads: set[threading.Thread], code: Any) -> None:
    """After a failed start-up: once the program is done, exit with ``code`` even if
    ``threads`` (started by the start-up, e.g. the worker thread of a database connection
    it opened and never closed) still run, instead of waiting for them forever.

    A daemon thread waits for the main thread to finish (Python then waits for the other
    threads), gives them ``LEFT_THREADS_GRACE_S``, then ends the process."""
    left = [t for t in threads if not t.daemon]
    if not left or threading.current_thread() is not threading.main_thread():
        return

    def watch() -> None:
        threading.main_thread().join()
        deadline = time.monotonic() + LEFT_THREADS_GRACE_S
        for t in left:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in left if t.is_alive()]
        if alive:
            with contextlib.suppress(Exception):
                sys.stderr.write(f"exiting: a failed start-up left threads running: {alive}\n")
                sys.stderr.flush()
                sys.stdout.flush()
            os._exit(code if isinstance(code, int) else 1)

    threading.Thread(target=watch, name="exit-after-failed-start", daemon=True).start()
