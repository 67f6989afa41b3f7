"""The evaluation server in test mode, in its own process, for ``agentfleet bench http``.

``python -m agentfleet.bench.evalserver --port 0 --latency 1`` prints ``PORT <n>`` once the
socket is bound, then serves until terminated. Every evaluation sleeps ``latency`` seconds;
``GET /stats`` reports connections seen, peak evaluations in flight and completions.
"""

from __future__ import annotations

import argparse

from agentfleet.bench.common import HOST, serve_app_announcing_port


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m agentfleet.bench.evalserver")
    p.add_argument("--host", default=HOST)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=1.0)
    p.add_argument("--queue-limit", type=int, default=1_000_000)
    p.add_argument(
        "--loop", choices=["asyncio", "uvloop", "auto"], default="asyncio", help="uvicorn's loop"
    )
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)

    from agentfleet.evaluation.server import create_app

    app = create_app(test_latency=args.latency, queue_limit=args.queue_limit)
    serve_app_announcing_port(app, args.host, args.port, args.log_level, loop=args.loop)


if __name__ == "__main__":
    main()
