"""A TCP proxy that injects connection faults, for drills of the fleet's HTTP paths.

Put it between any client and server (``FaultProxy(upstream_port=...)``, then point the
client at ``proxy.url``). A seeded share (``rate``) of the requests gets one fault, drawn
from ``kinds``. A request is what the client sends on a connection before the answer
starts, so every request of a kept-alive connection has its own draw (drawing once per
connection would spare most requests, as clients reuse few connections):

- ``reset_before``: the request is not forwarded and the client's connection is reset
  (RST): the server never sees it.
- ``reset_after``: the request is forwarded; when the answer starts, the client's
  connection is reset: the server did the work, the client never hears of it.
- ``stall``: the answer is held ``stall_s`` seconds, then forwarded.
- ``refuse``: this request goes through, but the proxy stops listening for ``refuse_s``
  seconds: the connects in that window are refused (``ECONNREFUSED``).

Faults are drawn in the order requests arrive, from ``random.Random(seed)``: the same
seed and the same order of requests give the same faults. ``script`` lists the faults of
the first requests (None: none), before any draw. ``stats`` counts connections, requests
(``exchanges``) and the faults injected, by kind.

It speaks TCP only, so it sees HTTP/1.1 requests as bytes: a request is detected as the
first bytes the client sends after an answer began (no pipelining, which aiohttp does not
do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("agentfleet.bench.faultproxy")

FAULT_KINDS: tuple[str, ...] = ("reset_before", "reset_after", "stall", "refuse")
_CHUNK = 64 * 1024


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _close(writer: asyncio.StreamWriter | None) -> None:
    """Close now, dropping unsent bytes."""
    if writer is not None:
        writer.transport.abort()


async def _shut(writer: asyncio.StreamWriter, within: float = 2.0) -> None:
    """Close after the bytes still buffered are sent, or at once if the peer does not read
    them within ``within`` seconds (a graceful close alone may wait forever)."""
    if writer.transport.is_closing():
        return
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), within)
    except (TimeoutError, OSError):
        writer.transport.abort()


@dataclass
class _Exchange:
    """The request / answer under way on one connection, and its fault."""

    fault: str | None = None
    answered: bool = False


class FaultProxy:
    """Forwards ``host:port`` (port 0: any free one) to ``upstream_host:upstream_port``,
    breaking a seeded ``rate`` of the requests (after the faults of ``script``).
    ``async with``, or ``start`` / ``aclose``."""

    def __init__(
        self,
        upstream_port: int,
        upstream_host: str = "127.0.0.1",
        *,
        rate: float = 0.2,
        kinds: Sequence[str] = FAULT_KINDS,
        seed: int | None = 0,
        stall_s: float = 1.0,
        refuse_s: float = 0.2,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "proxy",
        script: Sequence[str | None] = (),
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be within [0, 1], got {rate}")
        unknown = (set(kinds) | {k for k in script if k is not None}) - set(FAULT_KINDS)
        if unknown or not kinds:
            raise ValueError(f"fault kinds must be a non-empty subset of {FAULT_KINDS}")
        self.upstream = (upstream_host, upstream_port)
        self.rate, self.kinds = rate, tuple(kinds)
        self.stall_s, self.refuse_s = stall_s, refuse_s
        self.host, self.port, self.name = host, port, name
        self.rng = random.Random(seed)
        self.script = list(script)  # faults of the first requests, before any draw
        self.stats: Counter[str] = Counter()
        self._listener: socket.socket | None = None
        self._handlers: set[asyncio.Task[None]] = set()  # the work of each connection
        self._conns: set[asyncio.Task[Any]] = set()  # each accepted connection's task
        self._reopen: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> FaultProxy:
        await self._listen()
        return self

    async def _listen(self) -> None:
        # Our own accept callback, not asyncio.start_server: closing an asyncio Server while
        # a connection is being accepted leaks that connection's socket on Python 3.11
        # (Server._attach asserts), and `refuse` closes the listener mid-traffic.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(512)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        self.port = sock.getsockname()[1]
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_accept, sock)

    def _on_accept(self, sock: socket.socket) -> None:
        for _ in range(64):  # a burst, then back to the loop
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of fds: the connect waits in the backlog
                log.warning("%s: accept failed: %r", self.name, exc)
                return
            conn.setblocking(False)
            task = asyncio.ensure_future(self._open(conn))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    def _stop_listening(self) -> None:
        """Close the listening socket now: connects are refused from here on."""
        listener, self._listener = self._listener, None
        if listener is not None:
            asyncio.get_running_loop().remove_reader(listener.fileno())
            listener.close()

    async def _open(self, conn: socket.socket) -> None:
        if self._closed:
            conn.close()
            return
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except BaseException:
            conn.close()
            raise
        await self._accept(reader, writer)

    async def aclose(self) -> None:
        self._closed = True
        if self._reopen is not None:
            self._reopen.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reopen
        self._stop_listening()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._conns:  # their connections being closed (bounded by _shut)
            await asyncio.gather(*self._conns, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def draw(self) -> str | None:
        """The fault of the next request (None: none)."""
        if self.script:
            return self.script.pop(0)
        if self.rate > 0 and self.rng.random() < self.rate:
            return self.rng.choice(self.kinds)
        return None

    # connections ---------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The work runs in its own task, which aclose() cancels; this one ends normally and
        # closes the client's connection.
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._handlers.add(task)
        try:
            await task
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.debug("%s: connection ended: %r", self.name, exc)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are cancelled ourselves, not just our work
        finally:
            self._handlers.discard(task)
            await _shut(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats["connections"] += 1
        first = await reader.read(_CHUNK)
        if not first:
            return
        ex = _Exchange()
        if not self._begin(ex, writer):
            return
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        try:
            up_writer.write(first)
            await up_writer.drain()
            ahead = asyncio.ensure_future(self._ahead(reader, up_writer, writer, ex))
            back = asyncio.ensure_future(self._back(up_reader, writer, ex))
            try:
                await asyncio.wait({ahead, back}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (ahead, back):
                    t.cancel()
                await asyncio.gather(ahead, back, return_exceptions=True)
        finally:
            _close(up_writer)

    def _begin(self, ex: _Exchange, client: asyncio.StreamWriter) -> bool:
        """A new request on the connection: draw its fault; False if it ends here."""
        ex.fault, ex.answered = self.draw(), False
        self.stats["exchanges"] += 1
        if ex.fault is not None:
            self.stats[ex.fault] += 1
        if ex.fault == "refuse":
            self.refuse_for(self.refuse_s)
        if ex.fault == "reset_before":
            _reset(client)
            return False
        return True

    async def _ahead(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
        ex: _Exchange,
    ) -> None:
        """The client's bytes to the server; bytes after an answer start a new request."""
        while data := await src.read(_CHUNK):
            if ex.answered and not self._begin(ex, client):
                return
            dst.write(data)
            await dst.drain()

    async def _back(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, ex: _Exchange
    ) -> None:
        """The server's bytes back to the client; the fault hits the start of an answer."""
        while data := await src.read(_CHUNK):
            if not ex.answered:
                if ex.fault == "reset_after":
                    _reset(dst)
                    return
                if ex.fault == "stall":
                    await asyncio.sleep(self.stall_s)
                ex.answered = True
            dst.write(data)
            await dst.drain()

    # refusing ------------------------------------------------------------------------
    def refuse_for(self, seconds: float) -> None:
        """Stop listening (connects get ECONNREFUSED), listen again after ``seconds``."""
        if self._listener is None or self._reopen is not None or self._closed:
            return
        self._stop_listening()  # the listener only: accepted connections go on
        self._reopen = asyncio.create_task(self._listen_after(seconds))

    async def _listen_after(self, seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
            while not self._closed:
                try:
                    await self._listen()
                    break
                except OSError:  # the port is not free again yet
                    await asyncio.sleep(0.05)
        finally:
            self._reopen = None

    def snapshot(self) -> dict[str, Any]:
        return {"name": self.name, "port": self.port, **dict(self.stats)}


__all__ = ["FAULT_KINDS", "FaultProxy"]
