"""A stand-in sandbox server whose execs spawn nothing, for the fleet and sandbox benches.

Same routes and shapes as the real server (``POST /sandboxes``, ``POST .../exec``,
``DELETE``, ``/healthz``), but an exec answers at once: ``echo X`` outputs ``X``,
``sleep S`` waits S seconds (``asyncio.sleep``), anything else outputs nothing. It takes
process spawning out of the measurement, leaving the runner's own plumbing (HTTP, agent
loop, model waits).

``python -m agentfleet.bench.nullsandbox --port 0 [--loop asyncio]`` prints ``PORT <n>`` and serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import time
from typing import Any

from fastapi import FastAPI, Response

from agentfleet.bench.common import HOST, serve_app_announcing_port
from agentfleet.sandbox.base import CreateSandbox, ExecRequest, ExecResult, SandboxInfo


def create_app() -> FastAPI:
    app = FastAPI(title="null sandbox server")
    counter = itertools.count(1)
    alive: set[str] = set()

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "backend": "null", "sandboxes": len(alive)}

    @app.post("/sandboxes", status_code=201)
    async def create(req: CreateSandbox) -> SandboxInfo:
        sid = f"null-{next(counter)}"
        alive.add(sid)
        now = time.time()
        return SandboxInfo(
            sandbox_id=sid,
            backend="null",
            workdir="/",
            created_at=now,
            expires_at=now + req.ttl_s,
        )

    @app.post("/sandboxes/{sandbox_id}/exec")
    async def exec_command(sandbox_id: str, req: ExecRequest) -> ExecResult:
        cmd = req.command.strip()
        started = time.monotonic()
        if cmd.startswith("sleep "):
            with contextlib.suppress(ValueError):
                await asyncio.sleep(float(cmd[6:].strip()))
        output = cmd[5:].strip() + "\n" if cmd.startswith("echo ") else ""
        return ExecResult(
            output=output, returncode=0, duration_s=round(time.monotonic() - started, 6)
        )

    @app.delete("/sandboxes/{sandbox_id}", status_code=204)
    async def delete(sandbox_id: str) -> Response:
        alive.discard(sandbox_id)
        return Response(status_code=204)

    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m agentfleet.bench.nullsandbox")
    p.add_argument("--host", default=HOST)
    p.add_argument("--port", type=int, default=0)
    p.add_argument(
        "--loop", choices=["asyncio", "uvloop", "auto"], default="asyncio", help="uvicorn's loop"
    )
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    serve_app_announcing_port(
        create_app(), args.host, args.port, args.log_level, "confined=0", loop=args.loop
    )


if __name__ == "__main__":
    main()
