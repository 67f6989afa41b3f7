"""Run a FastAPI/ASGI app with uvicorn inside the current event loop, on a chosen port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

# Longer than the client pool's idle keep-alive (aiohttp: 15 s): no reuse race.
SERVER_KEEPALIVE_S = 75


def uvicorn_config(app: Any, host: str, port: int, **kw: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=kw.pop("log_level", "warning"),
        timeout_keep_alive=SERVER_KEEPALIVE_S,
        lifespan="on",
        backlog=4096,
        # asyncio, not uvloop: uvloop spawns subprocesses ~2 ms slower each, which is most of
        # a sandbox exec (docs/benchmarks.md measures both).
        loop=kw.pop("loop", "asyncio"),
        **kw,
    )


class EmbeddedServer(uvicorn.Server):
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
