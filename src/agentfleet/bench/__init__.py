"""Benchmarks that reproduce and extend the origin's figures (``agentfleet bench ...``).

- ``http``: evaluation client patterns (the origin's blocking / per-call session / threads,
  and agentfleet's shared pool) against an evaluation server in test mode.
- ``sandbox``: concurrent and sequential execs on the sandbox server vs a bare subprocess.
- ``fleet``: a whole fleet of agents with a fixed-latency model vs a thread-per-agent runner;
  with ``--backend ray``, the Ray backend's overhead against the local one (``ray_bench``).
- ``eval``: evaluation throughput and steadiness with 1 worker, pinned workers and Ray
  actors, on the real evaluator (``eval_bench``).

See ``docs/benchmarks.md`` for measured results.
"""

from __future__ import annotations

__all__ = ["bench_app"]


def __getattr__(name: str) -> object:
    if name == "bench_app":
        from agentfleet.bench.cli import bench_app

        return bench_app
    raise AttributeError(name)
