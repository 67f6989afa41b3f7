"""Evaluation workers as Ray actors: the remote worker loop (:class:`~agentfleet.evaluation.
worker.EvalWorker`) in one actor per CPU set, on any node of a Ray cluster, each timing in
sandboxes of its own node. The evaluation server stays the one queue and the one record:
actors lease jobs from it over HTTP like ``agentfleet eval-worker`` does, so a killed
actor's lease lapses and its job runs once more elsewhere, and an actor stopped gracefully
(``ray.cancel``) hands its lease back at once.

:func:`ray_eval_workers` places the actors by the CPUs free on each node at launch
(Ray's per-node available resources): a node's CPUs are cut in blocks of
``cores_per_worker`` (block ``k`` is the ``k``-th block of the node's affinity mask, as
local workers pin), the blocks its held CPUs cover are skipped (an earlier pool of
evaluation actors holds the first ones), and each block left is one slot. Fewer slots than
asked (read again for ``FREE_WAIT_S``: Ray frees a stopped actor's CPUs with a lag) is a
:class:`RayRoomError` naming what each node has free; an actor not started within
``START_TIMEOUT_S`` (its CPUs taken meanwhile) too: never a silent wait. Ray is imported
only here, when ``serve-eval --ray-address`` asks for it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentfleet.ray_setup import actor_runtime_env, init_ray

log = logging.getLogger("agentfleet.evaluation.ray")

FREE_WAIT_S = 5.0  # too few CPUs free: read again this long before it is an error
START_TIMEOUT_S = 120.0  # every actor placed and running within this, or an error
STOP_TIMEOUT_S = 15.0  # a stopping worker: result post (5 s) + release (5 s), or unwind


class RayRoomError(ValueError):
    """The Ray cluster has no room (free CPUs) for the evaluation workers asked for."""


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


def node_slots(
    nodes: Sequence[dict[str, Any]],
    cores_per_worker: int,
    free: Mapping[str, float] | None = None,
) -> list[tuple[str, int]]:
    """``(node_id, slot)`` for every worker that fits, nodes in the order given: on each
    alive node, the blocks of ``cores_per_worker`` CPUs past those its held CPUs cover
    (``free``: node id -> CPUs free now; None: all free). Unpinned (0): one per CPU of
    the node (such actors hold no CPU)."""
    out: list[tuple[str, int]] = []
    for node in nodes:
        if not node.get("Alive"):
            continue
        total = float(node.get("Resources", {}).get("CPU", 0))
        if not cores_per_worker:
            out.extend((node["NodeID"], k) for k in range(int(total)))
            continue
        held = total - free.get(node["NodeID"], 0.0) if free is not None else 0.0
        first = math.ceil(round(max(held, 0.0), 6) / cores_per_worker)
        out.extend((node["NodeID"], k) for k in range(first, int(total) // cores_per_worker))
    return out


def free_cpus() -> dict[str, float]:
    """CPUs free now on each live node (node id -> CPUs). Ray has no public per-node call:
    this is ``ray._private.state.available_resources_per_node()`` (a DeveloperAPI, as is
    ``ray.available_resources()``, its sum over the cluster)."""
    from ray._private.state import available_resources_per_node

    return {
        node: float(res.get("CPU", 0.0)) for node, res in available_resources_per_node().items()
    }


def _free_slots(
    cores_per_worker: int, workers: int | None
) -> tuple[list[dict[str, Any]], dict[str, float], list[tuple[str, int]]]:
    """The alive nodes, their free CPUs, and the slots these leave; read again for up to
    ``FREE_WAIT_S`` while they are fewer than ``workers`` (or none)."""
    import ray

    need = workers if workers is not None and cores_per_worker else 1
    deadline = time.monotonic() + FREE_WAIT_S
    while True:
        nodes, free = ray.nodes(), free_cpus()
        slots = node_slots(nodes, cores_per_worker, free)
        if len(slots) >= need or time.monotonic() >= deadline:
            return nodes, free, slots
        time.sleep(0.25)


def _free_text(nodes: Sequence[dict[str, Any]], free: Mapping[str, float]) -> str:
    """``node 1a2b3c4d: 1 of 2 CPUs free, ...`` for the alive nodes."""
    return ", ".join(
        f"node {n['NodeID'][:8]}: {free.get(n['NodeID'], 0.0):g} of "
        f"{float(n.get('Resources', {}).get('CPU', 0)):g} CPUs free"
        for n in nodes
        if n.get("Alive")
    )


@dataclass
class RayEvalPool:
    """The actors of one evaluation server (see :func:`ray_eval_workers`)."""

    handles: dict[str, Any] = field(default_factory=dict)  # name -> actor handle
    runs: dict[str, Any] = field(default_factory=dict)  # name -> ObjectRef of run()
    started_ray: bool = False

    def stop(self) -> None:
        """Cancel the actors (each hands its lease back), kill them, and shut down the
        Ray this pool started (blocking; again: nothing)."""
        _stop(self)


def launch_ray_eval_workers(
    address: str,
    *,
    server_url: str,
    token: str | None = None,
    workers: int | None = None,
    cores_per_worker: int = 1,
    confine: str = "auto",
    dataset_roots: Sequence[str | Path] = (),
    test_latency: float | None = None,
) -> RayEvalPool:
    """The actors of :func:`ray_eval_workers`, running when this returns (blocking); stop
    them with :meth:`RayEvalPool.stop`. :class:`RayRoomError` if they do not fit."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    pool = RayEvalPool()
    if not ray.is_initialized():
        init_ray(address, log_to_driver=False)
        pool.started_ray = True
    try:
        nodes, free, slots = _free_slots(cores_per_worker, workers)
        if not slots:
            raise RayRoomError(
                f"the Ray cluster has no CPU free for an evaluation worker "
                f"({_free_text(nodes, free) or 'no alive node'})"
            )
        if workers is not None:
            if cores_per_worker and workers > len(slots):
                raise RayRoomError(
                    f"{workers} Ray evaluation workers of {cores_per_worker} CPUs do not fit: "
                    f"the cluster has room for {len(slots)} ({_free_text(nodes, free)})"
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
                runtime_env=actor_runtime_env(),
            ).remote(
                server_url,
                name,
                token=token,
                slot=slot if cores_per_worker else 0,
                cores_per_worker=cores_per_worker,
                confine=confine,
                dataset_roots=[str(r) for r in dataset_roots],
                test_latency=test_latency,
            )
            pool.handles[name] = handle
            pool.runs[name] = handle.run.remote()
        _started(pool)
    except BaseException:  # no actor left behind, nor a Ray we started
        _stop(pool)
        raise
    log.info("started %d Ray evaluation workers for %s", len(pool.handles), server_url)
    return pool


def _started(pool: RayEvalPool) -> None:
    """Wait until every actor runs (placed on its node); :class:`RayRoomError` naming
    those still pending after ``START_TIMEOUT_S`` (their CPUs were taken after the count)."""
    import ray

    names = list(pool.handles)
    refs = [pool.handles[name].where.remote() for name in names]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=START_TIMEOUT_S)
    if len(ready) < len(refs):
        pending = [name for name, ref in zip(names, refs, strict=True) if ref not in ready]
        raise RayRoomError(
            f"Ray evaluation actors not started after {START_TIMEOUT_S:g} s (their CPUs "
            f"taken meanwhile?): {', '.join(pending)}"
        )
    ray.get(ready)  # an actor that failed to start raises here


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
        pool.started_ray = False
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
    ``workers`` (default: every free slot of the cluster) actors of ``cores_per_worker``
    CPUs (0: not pinned); :class:`RayRoomError` if they do not fit in the CPUs free now.
    The actors are running when the block starts; cancelled, then killed, on exit.
    """
    launch = functools.partial(
        launch_ray_eval_workers, address, server_url=server_url, token=token,
        workers=workers, cores_per_worker=cores_per_worker, confine=confine,
        dataset_roots=dataset_roots, test_latency=test_latency,
    )  # fmt: skip
    async with stopped_on_exit(await asyncio.to_thread(launch)) as pool:
        yield pool


@asynccontextmanager
async def stopped_on_exit(pool: RayEvalPool) -> AsyncIterator[RayEvalPool]:
    """``pool`` while the block runs, stopped (in a thread) when it exits."""
    try:
        yield pool
    finally:
        await asyncio.shield(asyncio.to_thread(pool.stop))


__all__ = [
    "EvalWorkerActor",
    "RayEvalPool",
    "RayRoomError",
    "free_cpus",
    "launch_ray_eval_workers",
    "node_slots",
    "ray_eval_workers",
    "stopped_on_exit",
]
