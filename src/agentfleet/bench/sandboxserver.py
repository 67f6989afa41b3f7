"""The sandbox server in its own process, for the sandbox/fleet benches.

``python -m agentfleet.bench.sandboxserver --port 0 [--backend process|docker]
[--confine required|auto|off]`` prints ``PORT <n>`` once bound, then serves until terminated.
Clients need the token of ``$AGENTFLEET_SANDBOX_TOKEN`` (none if unset; then only a
loopback ``--host`` is served). Exec caps are high enough never to throttle a bench.
The docker backend (``make_backend("docker")``) is started by the app's lifespan, which
also deletes every sandbox (container) at shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile

from agentfleet.bench.common import HOST, confine_modes, serve_app_announcing_port


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m agentfleet.bench.sandboxserver")
    p.add_argument("--host", default=HOST)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--backend", choices=["process", "docker"], default="process")
    p.add_argument("--confine", default="auto", help="required | auto | off (yes, no: aliases)")
    p.add_argument("--max-sandboxes", type=int, default=4096)
    p.add_argument("--root", default=None, help="sandboxes folder (default: a temp dir)")
    p.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="asyncio")
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)

    from agentfleet.http.auth import server_token
    from agentfleet.sandbox.base import DEFAULT_MAX_EXECS, TOKEN_ENV
    from agentfleet.sandbox.process import ProcessBackend, confine_mode
    from agentfleet.sandbox.server import create_app, make_backend
    from agentfleet.sandbox.service import SandboxService

    token = server_token(None, TOKEN_ENV, args.host)
    caps = {
        "max_sandboxes": args.max_sandboxes,
        "max_execs": max(DEFAULT_MAX_EXECS, args.max_sandboxes),
    }
    if args.backend == "docker":
        # started by the app's lifespan (on the server's loop: aiodocker's session is bound
        # to it), which deletes every container at shutdown
        root = args.root or tempfile.mkdtemp(prefix="agentfleet-bench-sb-")
        service = SandboxService(make_backend("docker", root=root), **caps)
        serve_app_announcing_port(
            create_app(service, token=token),
            args.host,
            args.port,
            args.log_level,
            extra=f"backend=docker loop={args.loop}",
            loop=args.loop,
        )
        return

    try:
        confine = confine_mode(confine_modes(args.confine, many=False)[0])
    except ValueError as exc:
        p.error(str(exc))
    # uvicorn re-raises SIGTERM after its shutdown: pass --root for a folder the parent
    # removes; a temp dir made here may be left behind (empty: sandboxes are deleted).
    root = args.root or tempfile.mkdtemp(prefix="agentfleet-bench-sb-")
    backend = ProcessBackend(root, confine=confine)
    # decide confinement now, to announce it (the app's lifespan starts the backend)
    asyncio.run(backend.probe_confinement())
    service = SandboxService(backend, **caps)
    app = create_app(service, token=token)
    serve_app_announcing_port(
        app,
        args.host,
        args.port,
        args.log_level,
        extra=f"confined={int(backend.confined)} loop={args.loop}",
        loop=args.loop,
    )


if __name__ == "__main__":
    main()
