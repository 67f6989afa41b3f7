"""A TCP proxy that injects connection faults, for drills of the fleet's HTTP paths.

Put it between any client and server (``FaultProxy(upstream_port=...)``, then point the
client at ``proxy.url``). A seeded share of connections (``rate``) gets one fault, drawn
from ``kinds``:

- ``reset_before``: the client's first bytes are read, nothing is forwarded, the
  connection is reset (RST): the server never sees the request.
- ``reset_after``: the request is forwarded; when the answer starts, the client's
  connection is reset: the server did the work, the client never hears of it.
- ``stall``: the first answer is held ``stall_s`` seconds, then forwarded.
- ``refuse``: this connection is forwarded, but the proxy stops listening for
  ``refuse_s`` seconds: the connects in that window are refused (``ECONNREFUSED``).

Faults are drawn in the order connections are accepted, from ``random.Random(seed)``:
the same seed and the same order of connections give the same faults. ``stats`` counts
connections and the faults injected, by kind.
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
    if writer is not None and not writer.is_closing():
        writer.close()


class FaultProxy:
    """Forwards ``host:port`` (port 0: any free one) to ``upstream_host:upstream_port``,
        breaking a seeded ``rate`` of the connections (after the faults of ``script``, one per
    connection, None for none). ``async with``, or ``start`` / ``aclose``."""

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
        self.script = list(script)  # faults of the first connections, before any draw
        self.stats: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._reopen: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> FaultProxy:
        await self._listen()
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        self._closed = True
        if self._reopen is not None:
            self._reopen.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reopen
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def draw(self) -> str | None:
        """The fault of the next connection (None: none)."""
        if self.script:
            return self.script.pop(0)
        if self.rate > 0 and self.rng.random() < self.rate:
            return self.rng.choice(self.kinds)
        return None

    # connections ---------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The work runs in its own task, which aclose() cancels: asyncio's stream server
        # logs an error for a cancelled connection callback, so that one must end normally.
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
            _close(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats["connections"] += 1
        fault = self.draw()
        if fault is not None:
            self.stats[fault] += 1
        if fault == "refuse":
            self.refuse_for(self.refuse_s)
        first = await reader.read(_CHUNK)
        if not first:
            return
        if fault == "reset_before":
            _reset(writer)
            return
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        try:
            up_writer.write(first)
            await up_writer.drain()
            ahead = asyncio.ensure_future(self._pipe(reader, up_writer))
            back = asyncio.ensure_future(self._answer(up_reader, writer, fault))
            try:
                await asyncio.wait({ahead, back}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (ahead, back):
                    t.cancel()
                await asyncio.gather(ahead, back, return_exceptions=True)
        finally:
            _close(up_writer)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(_CHUNK):
            dst.write(data)
            await dst.drain()

    async def _answer(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, fault: str | None
    ) -> None:
        """The server's bytes back to the client; the fault hits the first answer."""
        data = await src.read(_CHUNK)
        if not data:
            return
        if fault == "reset_after":
            _reset(dst)
            return
        if fault == "stall":
            await asyncio.sleep(self.stall_s)
        dst.write(data)
        await dst.drain()
        await self._pipe(src, dst)

    # refusing ------------------------------------------------------------------------
    def refuse_for(self, seconds: float) -> None:
        """Stop listening (connects get ECONNREFUSED), listen again after ``seconds``."""
        if self._server is None or self._reopen is not None or self._closed:
            return
        self._server.close()  # the listening socket only: accepted connections go on
        self._server = None
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
