"""Evaluation workers as Ray actors: the remote worker loop (:class:`~agentfleet.evaluation.
worker.EvalWorker`) in one actor per CPU set, on any node of a Ray cluster, each timing in
sandboxes of its own node. The evaluation server stays the one queue and the one record:
actors lease jobs from it over HTTP like ``agentfleet eval-worker`` does, so a killed
actor's lease lapses and its job runs once more elsewhere, and an actor stopped gracefully
(``ray.cancel``) hands its lease back at once.

:func:`ray_eval_workers` places the actors: each alive node gets ``its CPUs //
cores_per_worker`` slots; actor ``k`` of a node pins its commands to the ``k``-th block of
``cores_per_worker`` CPUs of that node's affinity mask (as local workers do). Ray is
imported only here, when ``serve-eval --ray-address`` asks for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("agentfleet.evaluation.ray")

# Actors run asyncio's loop, as every agentfleet server does (fleet/ray_actor.py too).
ACTOR_ENV = {"RAY_USE_UVLOOP": "0"}
STOP_TIMEOUT_S = 15.0  # a stopping worker: result post (5 s) + release (5 s), or unwind


class EvalWorkerActor:
    """One evaluation worker (Ray async actor): slot ``slot`` of its node's CPU sets."""

    def __init__(
        self,
        server_url: str,
        name: str,
        *,
        token: str | None,
        slot: int,
        cores_per_worker: int,
        confine: str,
        dataset_roots: Sequence[str],
        test_latency: float | None,
    ) -> None:
        from agentfleet.evaluation.pinning import plan_cpu_sets

        self.server_url = server_url
        self.name = name
        self.token = token
        sets = plan_cpu_sets(slot + 1, cores_per_worker) if cores_per_worker else None
        self.cpus = sets[slot] if sets else None
        self.confine = confine
        self.dataset_roots = tuple(dataset_roots)
        self.test_latency = test_latency

    def where(self) -> dict[str, Any]:
        import socket

        return {"name": self.name, "node": socket.gethostname(), "cpus": self.cpus}

    async def run(self) -> int:
        """Lease and evaluate jobs until cancelled."""
        import socket

        from agentfleet.evaluation.worker import WorkerEvaluators, serve_worker

        evaluators = WorkerEvaluators(
            dataset_roots=self.dataset_roots,
            confine=self.confine,
            test_latency=self.test_latency,
        )
        return await serve_worker(
            self.server_url,
            evaluators,
            token=self.token,
            name=self.name,
            node=socket.gethostname(),
            cpus=self.cpus,
        )


def node_slots(nodes: Sequence[dict[str, Any]], cores_per_worker: int) -> list[tuple[str, int]]:
    """``(node_id, slot)`` for every worker that fits: each alive node's CPUs //
    ``cores_per_worker`` (unpinned: one per CPU), nodes in the order given."""
    out: list[tuple[str, int]] = []
    for node in nodes:
        if not node.get("Alive"):
            continue
        cpus = int(node.get("Resources", {}).get("CPU", 0))
        per = cpus // cores_per_worker if cores_per_worker else cpus
        out.extend((node["NodeID"], k) for k in range(per))
    return out


@dataclass
class RayEvalPool:
    """The actors of one evaluation server (see :func:`ray_eval_workers`)."""

    handles: dict[str, Any] = field(default_factory=dict)  # name -> actor handle
    runs: dict[str, Any] = field(default_factory=dict)  # name -> ObjectRef of run()
    started_ray: bool = False


def _launch(
    address: str,
    server_url: str,
    token: str | None,
    workers: int | None,
    cores_per_worker: int,
    confine: str,
    dataset_roots: Sequence[str],
    test_latency: float | None,
) -> RayEvalPool:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    pool = RayEvalPool()
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, log_to_driver=False)
        pool.started_ray = True
    try:
        slots = node_slots(ray.nodes(), cores_per_worker)
        if not slots:
            raise ValueError("the Ray cluster has no CPU for an evaluation worker")
        if workers is not None:
            if cores_per_worker and workers > len(slots):
                raise ValueError(
                    f"{workers} Ray evaluation workers of {cores_per_worker} CPUs do not fit: "
                    f"the cluster has room for {len(slots)}"
                )
            slots = (
                slots[:workers]
                if cores_per_worker
                else [slots[i % len(slots)] for i in range(workers)]
            )
        actor_cls = ray.remote(EvalWorkerActor)
        for i, (node_id, slot) in enumerate(slots):
            name = f"ray-eval-{i}@{node_id[:8]}"
            handle: Any = actor_cls.options(
                num_cpus=cores_per_worker,
                max_restarts=3,  # a crashed actor comes back and leases again...
                max_task_retries=3,  # ...its run() called anew; ray.kill ends it for good
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                runtime_env={"env_vars": dict(ACTOR_ENV)},
            ).remote(
                server_url,
                name,
                token=token,
                slot=slot if cores_per_worker else 0,
                cores_per_worker=cores_per_worker,
                confine=confine,
                dataset_roots=list(dataset_roots),
                test_latency=test_latency,
            )
            pool.handles[name] = handle
            pool.runs[name] = handle.run.remote()
    except BaseException:  # no actor left behind, nor a Ray we started
        _stop(pool)
        raise
    log.info("started %d Ray evaluation workers for %s", len(pool.handles), server_url)
    return pool


def _stop(pool: RayEvalPool) -> None:
    import ray

    for ref in pool.runs.values():
        try:
            ray.cancel(ref)
        except Exception as exc:  # an actor already gone
            log.debug("ray.cancel: %s", exc)
    if pool.runs:
        ray.wait(list(pool.runs.values()), num_returns=len(pool.runs), timeout=STOP_TIMEOUT_S)
    for handle in pool.handles.values():
        try:
            ray.kill(handle)
        except Exception as exc:  # already dead
            log.debug("ray.kill: %s", exc)
    pool.handles.clear()
    pool.runs.clear()
    if pool.started_ray:
        ray.shutdown()


@asynccontextmanager
async def ray_eval_workers(
    address: str,
    *,
    server_url: str,
    token: str | None = None,
    workers: int | None = None,
    cores_per_worker: int = 1,
    confine: str = "auto",
    dataset_roots: Sequence[str | Path] = (),
    test_latency: float | None = None,
) -> AsyncIterator[RayEvalPool]:
    """Ray actors leasing jobs from the server at ``server_url`` while the block runs.

    ``address``: ``auto`` (a running cluster), ``host:port``, or ``local`` (start one in
    this process); Ray already initialised in this process is used as it is.
    ``workers`` (default: every slot of the cluster) actors of ``cores_per_worker`` CPUs
    (0: not pinned). The actors are cancelled, then killed, on exit.
    """
    roots = [str(r) for r in dataset_roots]
    pool = await asyncio.to_thread(
        _launch, address, server_url, token, workers, cores_per_worker, confine, roots,
        test_latency,
    )  # fmt: skip
    try:
        yield pool
    finally:
        await asyncio.shield(asyncio.to_thread(_stop, pool))


__all__ = ["ACTOR_ENV", "EvalWorkerActor", "RayEvalPool", "node_slots", "ray_eval_workers"]
