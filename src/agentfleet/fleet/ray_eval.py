"""A Ray run's evaluations on Ray evaluation actors (``agentfleet run --backend ray
--ray-eval actors``, the default; the choice is made by ``fleet.config.ray_eval_mode``).

``actors`` (the default): the driver serves one evaluation server (no local worker, a
token of its own) and Ray evaluation actors lease its jobs, one per CPU set of the cluster
(:func:`~agentfleet.evaluation.ray_workers.ray_eval_workers`, as ``serve-eval
--ray-address`` does); every shard submits there. ``shards``: each shard embeds its own
evaluation server with local workers on its node (image tasks need it: the actors time
in process sandboxes). A run given ``--eval-url`` uses that server either way.

Imported by the Ray backend only (it needs Ray initialised).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NamedTuple

from agentfleet.evaluation.ray_workers import ray_eval_workers
from agentfleet.evaluation.sandboxes import default_evaluator_factory
from agentfleet.evaluation.server import create_app
from agentfleet.fleet.config import FleetConfig, eval_config
from agentfleet.serving import serve_in_loop
from agentfleet.tasks import load_dataset


class DriverEval(NamedTuple):
    url: str
    token: str
    actors: list[str]  # the evaluation actors' worker names


def eval_host() -> str:
    """The address the driver's evaluation server listens on: this node's, as Ray knows
    it (127.0.0.1 for the local Ray a run starts)."""
    import ray

    return str(ray.util.get_node_ip_address())


@asynccontextmanager
async def driver_evaluation(cfg: FleetConfig) -> AsyncIterator[DriverEval]:
    """The driver's evaluation server (jobs in memory, no local worker) and its Ray
    evaluation actors (``cfg.eval_workers`` of them, default one per CPU free in the
    cluster, each pinned to one CPU of its node; none free: ``RayRoomError``), the
    server's settings from ``cfg``. On exit the actors stop first (handing back their
    leases), then the server."""
    roots = [(await asyncio.to_thread(load_dataset, cfg.dataset)).path]
    config = eval_config(cfg)
    token = secrets.token_urlsafe(32)
    app = create_app(
        # submit-time checks only (task, split, the patch applies): the actors evaluate
        evaluator_factory=default_evaluator_factory(None, config, None, roots, "auto"),
        workers=0,
        token=token,
        worker_spec={"config": config.model_dump(mode="json")},
    )
    host = await asyncio.to_thread(eval_host)
    async with (
        serve_in_loop(app, host) as server,
        ray_eval_workers(
            "auto",
            server_url=server.url,
            token=token,
            workers=cfg.eval_workers,
            cores_per_worker=1,
            confine="auto",
            dataset_roots=roots,
        ) as actors,
    ):
        yield DriverEval(server.url, token, sorted(actors.handles))


__all__ = ["DriverEval", "driver_evaluation", "eval_host"]
