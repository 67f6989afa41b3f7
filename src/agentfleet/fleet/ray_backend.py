"""The Ray backend of the fleet runner: tasks spread over K async actors (shards).

The driver (:func:`run_fleet_ray`, a plain sync function) splits the tasks over ``shards``
Ray actors. Each actor is an *async actor*: its methods run on the actor's own event loop,
which owns its own :class:`~agentfleet.http.pool.HttpPool` (closed when the actor shuts
down), and runs each task with the local backend's :func:`~agentfleet.fleet.agent_run.run_one`.
On start an actor enters :func:`~agentfleet.fleet.servers.embedded_servers` on its node, so
sandboxes live next to the agents that use them, unless sandbox URLs are given.

The driver is the only writer of the run folder: an actor returns ``(outcome, trajectory)``
per task and the driver appends it to ``results.jsonl`` / ``trajectories/`` as it arrives,
so resume and report work as for a local run (``cfg.resume`` is applied here, as in
``run_fleet``; ``config.json`` is the local backend's, plus ``backend`` and ``shards``).
The driver keeps a work queue and gives each actor at most its share of ``cfg.workers``
tasks at once, so a slow shard never holds tasks another one could run.

Evaluations: by default (``eval_on="actors"``) the driver serves one evaluation server
whose jobs Ray evaluation actors run, one per CPU of the cluster
(:mod:`~agentfleet.fleet.ray_eval`); ``"shards"``: each actor embeds its own.

Failures: a task whose actor dies (``RayActorError``) is queued again and runs on another
actor (a replacement actor is started, up to ``max_actor_restarts`` times). On Ctrl-C or
SIGTERM (the driver's loop runs under :func:`~agentfleet.serving.run_async`), or any other
exit, every actor is asked to ``shutdown`` (its running agents are cancelled, so
their sandboxes are deleted, then its embedded servers stop) with a bounded wait, then
killed.

Nothing on the local path imports this module: ``import ray`` happens here only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from agentfleet.fleet.config import FleetConfig, ray_eval_mode, run_config
from agentfleet.fleet.monitor import FleetMonitor
from agentfleet.fleet.outcome import Listener, TaskOutcome
from agentfleet.fleet.ray_actor import FleetShard
from agentfleet.fleet.runner import RunPlan, delete_killed_runs_sandboxes, plan_run
from agentfleet.fleet.writer import ResultsWriter, trajectory
from agentfleet.ray_setup import actor_runtime_env, init_ray
from agentfleet.serving import run_async
from agentfleet.tasks import Task

log = logging.getLogger("agentfleet.fleet.ray")

__all__ = ["ActorHook", "FleetShard", "run_fleet_ray", "shard_capacities"]

# Called with (actor name, actor handle) each time the driver starts an actor (tests use it).
ActorHook = Callable[[str, Any], None]

SHUTDOWN_TIMEOUT_S = 30.0
START_TIMEOUT_S = 120.0  # an actor not started by then is killed and replaced


def shard_capacities(workers: int, shards: int) -> list[int]:
    """``workers`` agents at once split over ``shards`` actors (each at least one)."""
    base, extra = divmod(max(workers, shards), shards)
    return [base + (1 if i < extra else 0) for i in range(shards)]


@dataclass(eq=False)
class _Shard:
    index: int
    name: str
    handle: Any
    capacity: int
    slot: int
    launched: float = field(default_factory=time.monotonic)
    started: bool = False
    start_call: asyncio.Future[Any] | None = None  # its start() call (in flight: in waiting)
    alive: bool = True
    running: set[str] = field(default_factory=set)

    @property
    def free(self) -> int:
        return self.capacity - len(self.running) if self.alive and self.started else 0


def _future(ref: Any) -> asyncio.Future[Any]:
    return asyncio.wrap_future(ref.future())


async def _drive(
    cfg: FleetConfig,
    tasks: list[Task],
    config: dict[str, Any],
    *,
    shards: int,
    sandbox_urls: list[str] | None,
    listener: Listener | None,
    actor_hook: ActorHook | None,
    actor_options: dict[str, Any],
    max_actor_restarts: int,
    max_task_attempts: int,
    shutdown_timeout_s: float,
    start_timeout_s: float,
) -> list[TaskOutcome]:
    writer = ResultsWriter(cfg.run_dir)
    await writer.prepare(config)
    await delete_killed_runs_sandboxes(cfg, sandbox_urls or [cfg.sandbox_url])
    notify = listener or (lambda *_: None)
    by_id = {t.id: t for t in tasks}
    capacities = shard_capacities(cfg.workers, shards)
    actor_cls: Any = ray.remote(FleetShard)
    prefix = f"agentfleet-{cfg.run_dir.name}-{os.getpid()}-{time.monotonic_ns() % 10**6}"

    pending: deque[str] = deque(t.id for t in tasks)
    attempts: dict[str, int] = dict.fromkeys(by_id, 0)
    outcomes: list[TaskOutcome] = []
    all_shards: list[_Shard] = []
    # future -> (shard, task id or None for the shard's start call)
    waiting: dict[asyncio.Future[Any], tuple[_Shard, str | None]] = {}
    restarts = 0

    def launch(slot: int) -> None:
        index = len(all_shards)
        url = sandbox_urls[slot % len(sandbox_urls)] if sandbox_urls else cfg.sandbox_url
        shard_cfg = dataclasses.replace(cfg, sandbox_url=url, workers=capacities[slot])
        name = f"{prefix}-{index}"
        options = {
            "name": name,
            "max_concurrency": capacities[slot] + 4,  # room for start/shutdown calls
            "num_cpus": 0,
            "scheduling_strategy": "SPREAD",
            **actor_options,
        }
        runtime_env = actor_runtime_env(options.get("runtime_env"))
        if runtime_env is not None:
            options["runtime_env"] = runtime_env
        else:
            options.pop("runtime_env", None)
        handle = actor_cls.options(**options).remote(shard_cfg, index)
        shard = _Shard(index, name, handle, capacities[slot], slot)
        all_shards.append(shard)
        shard.start_call = _future(handle.start.remote())
        waiting[shard.start_call] = (shard, None)
        if actor_hook is not None:
            actor_hook(name, handle)

    async def record(outcome: TaskOutcome, traj: dict[str, Any]) -> None:
        await writer.write(outcome, traj)
        outcomes.append(outcome)
        notify("done", by_id[outcome.instance_id], outcome)

    async def give_up(task_id: str, error: str) -> None:
        outcome = TaskOutcome(task_id, "Error", error=error)
        await record(outcome, trajectory(by_id[task_id], outcome, [], None, ""))

    def lose(shard: _Shard, exc: BaseException) -> None:
        nonlocal restarts
        if not shard.alive:
            return
        shard.alive = False
        log.warning("Ray actor %s died (%s)", shard.name, type(exc).__name__)
        if restarts < max_actor_restarts and pending_or_running():
            restarts += 1
            launch(shard.slot)

    def pending_or_running() -> bool:
        return bool(pending) or any(s.running for s in all_shards if s.alive)

    def starting() -> list[tuple[asyncio.Future[Any], _Shard]]:
        """The start calls in flight (a scan of the few shards, not of every task's call)."""
        return [(s.start_call, s) for s in all_shards if s.start_call in waiting]

    async def stalled(now: float) -> None:
        """Kill and replace the actors whose start took ``start_timeout_s`` already."""
        for fut, shard in starting():
            if fut.done() or now - shard.launched < start_timeout_s:
                continue
            waiting.pop(fut)
            fut.cancel()
            error = f"Ray actor {shard.name} did not start in {start_timeout_s:.0f} s"
            if not any(s.alive for s in all_shards if s is not shard) and not (
                restarts < max_actor_restarts and pending_or_running()
            ):
                raise RuntimeError(f"{error}: is the cluster short of resources (ray status)?")
            log.warning("%s: killed, replaced if restarts are left", error)
            lose(shard, TimeoutError(error))
            await asyncio.to_thread(_kill, shard)

    try:
        for slot in range(shards):
            launch(slot)
        while pending or waiting:
            for shard in all_shards:
                while pending and shard.free > 0:
                    task_id = pending.popleft()
                    attempts[task_id] += 1
                    shard.running.add(task_id)
                    notify("start", by_id[task_id], None)
                    waiting[_future(shard.handle.run_task.remote(task_id))] = (shard, task_id)
            if not waiting:  # work left, no actor alive or starting
                for task_id in pending:
                    await give_up(task_id, "no Ray actor left to run it")
                pending.clear()
                break
            starts = [sh.launched for _, sh in starting()]
            timeout = max(0.0, min(starts) + start_timeout_s - time.monotonic()) if starts else None
            done, _ = await asyncio.wait(
                waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            await stalled(time.monotonic())
            for fut in done:
                shard, what = waiting.pop(fut)
                if what is None:  # a start call
                    try:
                        info = fut.result()
                    except RayActorError as exc:
                        lose(shard, exc)
                    except RayTaskError as exc:
                        if not any(s.started for s in all_shards):
                            raise RuntimeError(f"Ray actor {shard.name} could not start") from exc
                        log.error("Ray actor %s could not start: %s", shard.name, exc)
                        shard.alive = False
                    else:
                        shard.started = True
                        log.info(
                            "shard %s on %s (pid %s, %s loop, pool %s), sandboxes %s, "
                            "evaluation %s",
                            shard.name,
                            info["host"],
                            info["pid"],
                            info["loop"],
                            info["pool"],
                            info["sandbox_url"],
                            info["eval_url"],
                        )
                    continue
                task_id = what
                shard.running.discard(task_id)
                try:
                    outcome, traj = fut.result()
                except RayActorError as exc:
                    if attempts[task_id] >= max_task_attempts:
                        await give_up(task_id, f"its Ray actor died {attempts[task_id]} times")
                    else:
                        pending.appendleft(task_id)
                    lose(shard, exc)
                except RayTaskError as exc:
                    await give_up(task_id, f"{type(exc).__name__}: {exc}"[:2000])
                else:
                    await record(outcome, traj)
    finally:
        for fut in waiting:
            fut.cancel()
        await _stop(all_shards, shutdown_timeout_s)
    order = {t.id: i for i, t in enumerate(tasks)}
    return sorted(outcomes, key=lambda o: order[o.instance_id])


async def _stop(shards: list[_Shard], timeout_s: float) -> None:
    """Ask every started actor to shut down (bounded wait), then kill every actor. Safe to
    call when cancelled. One still starting has no agent yet: it is killed at once."""
    live = [s for s in shards if s.alive and s.started]
    calls = []
    for shard in live:
        try:
            calls.append(_future(shard.handle.shutdown.remote()))
        except Exception as exc:  # the actor is gone already
            log.debug("shutdown of %s: %s", shard.name, exc)
    if calls:
        done, not_done = await asyncio.wait(calls, timeout=timeout_s)
        for fut in done:
            if not fut.cancelled() and fut.exception() is not None:
                log.debug("actor shutdown failed: %s", fut.exception())
        for fut in not_done:
            fut.cancel()
        if not_done:
            log.warning("%d Ray actors did not shut down in %.0f s", len(not_done), timeout_s)

    def kill_all() -> None:
        for shard in shards:
            _kill(shard)

    await asyncio.to_thread(kill_all)


def _kill(shard: _Shard) -> None:
    try:
        ray.kill(shard.handle)
    except Exception as exc:
        log.debug("ray.kill(%s): %s", shard.name, exc)
    shard.alive = False


def run_fleet_ray(
    cfg: FleetConfig,
    *,
    shards: int,
    address: str | None = None,
    sandbox_urls: list[str] | None = None,
    eval_on: str | None = None,
    listener: Listener | None = None,
    monitor: FleetMonitor | None = None,
    actor_hook: ActorHook | None = None,
    actor_options: dict[str, Any] | None = None,
    max_actor_restarts: int | None = None,
    max_task_attempts: int = 3,
    shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
    start_timeout_s: float = START_TIMEOUT_S,
    init_kwargs: dict[str, Any] | None = None,
    plan: RunPlan | None = None,
) -> list[TaskOutcome]:
    """Run the fleet on ``shards`` Ray actors; results land in ``cfg.run_dir`` as they finish.

    With ``cfg.resume``, runs only the tasks of ``cfg.run_dir`` without a result (and failed
    ones with ``cfg.rerun_failed``), like :func:`~agentfleet.fleet.runner.run_fleet`; with
    nothing left to do it records the invocation and starts no Ray.

    Call from sync code (not inside a running event loop). Connects to Ray with
    ``ray.init(address=address)`` unless Ray is initialised already (``None``: start a local
    single-node Ray, dashboard off); shuts Ray down at the end only if it started it.

    Args:
        shards: number of actors; ``cfg.workers`` agents at once are split over them.
        address: ``"auto"``, ``"ray://head:10001"``, ``"host:6379"`` or ``None``.
        sandbox_urls: sandbox servers; actor ``i`` uses ``sandbox_urls[i % len]``. ``None``:
            ``cfg.sandbox_url`` if set, else each actor embeds one on its node.
            ``cfg.eval_url``: a shared evaluation server; ``None``: see ``eval_on``.
        eval_on: where embedded evaluations run (``cfg.eval_url`` is None): ``"actors"``,
            one evaluation server in the driver whose jobs Ray evaluation actors run, one
            per CPU of the cluster (``cfg.eval_workers`` of them if set), each pinned to
            a CPU of its node (:mod:`~agentfleet.fleet.ray_eval`); ``"shards"``, one
            embedded per shard, with local workers on the shard's node. ``None``:
            :func:`~agentfleet.fleet.config.ray_eval_mode`'s default (actors, but shards
            for image tasks); ``ValueError`` with ``cfg.eval_url`` or a combination that
            cannot work.
        listener: ``listener(event, task, outcome)`` with ``"start"`` / ``"done"``, as for
            the local backend (called on the driver).
        monitor: live state for a dashboard (totals, running, results), as ``run_fleet``.
        actor_hook: called with ``(name, handle)`` for every actor started (tests).
        actor_options: extra ``.options(...)`` for the actors (``num_cpus``, ``resources``,
            ``scheduling_strategy``...; defaults: ``num_cpus=0``, ``"SPREAD"``).
        max_actor_restarts: replacement actors for ones that die (default: ``shards``).
        max_task_attempts: runs of one task whose actor keeps dying before it is an Error.
        shutdown_timeout_s: bound on the actors' graceful shutdown, before ``ray.kill``.
        start_timeout_s: an actor not started by then (placed, servers up) is killed and
            replaced (a restart); ``RuntimeError`` when no actor is left to run the tasks.
        init_kwargs: extra ``ray.init`` arguments when this function starts Ray.
        plan: :func:`~agentfleet.fleet.runner.plan_run`'s, if the caller made it already.

    The Ray backend of :func:`agentfleet.fleet.run.run`, which also writes the summary.
    ``ray.init`` replaces the SIGTERM handler; a handler the caller installed (such as
    ``run``'s graceful stop) is put back.

    Raises:
        Stopped: (a ``KeyboardInterrupt``) on SIGINT or SIGTERM, after the actors and their
            sandboxes are gone.
    """
    if shards < 1:
        raise ValueError("shards must be at least 1")
    if sandbox_urls is not None and not sandbox_urls:
        raise ValueError("sandbox_urls is empty")
    eval_on = ray_eval_mode(eval_on, cfg)
    actors_eval = eval_on == "actors" and cfg.eval_url is None
    run = plan if plan is not None else plan_run(cfg)
    tasks = run.tasks
    config = {**run_config(cfg, run.all_ids, [t.id for t in tasks]), "backend": "ray"}
    config["shards"] = shards
    if cfg.eval_url is None:
        config["ray_eval"] = eval_on
    if monitor is not None:
        monitor.total, monitor.skipped = len(tasks), run.skipped
        monitor.started_at = time.monotonic()
    listener = _monitored(listener, monitor)
    if not tasks:  # nothing to run: record the invocation, leave Ray alone
        return run_async(_record_only(cfg, config, sandbox_urls))
    started_ray = False
    if not ray.is_initialized():
        init_ray(address, **(init_kwargs or {}))
        started_ray = True
    drive = functools.partial(
        _drive,
        tasks=tasks,
        config=config,
        shards=shards,
        sandbox_urls=sandbox_urls,
        listener=listener,
        actor_hook=actor_hook,
        actor_options=dict(actor_options or {}),
        max_actor_restarts=shards if max_actor_restarts is None else max_actor_restarts,
        max_task_attempts=max_task_attempts,
        shutdown_timeout_s=shutdown_timeout_s,
        start_timeout_s=start_timeout_s,
    )
    try:
        return run_async(_drive_on_actors(cfg, drive) if actors_eval else drive(cfg))
    finally:
        if started_ray:
            ray.shutdown()


async def _drive_on_actors(
    cfg: FleetConfig, drive: Callable[[FleetConfig], Awaitable[list[TaskOutcome]]]
) -> list[TaskOutcome]:
    """``drive`` with the driver's evaluation server and its Ray evaluation actors."""
    from agentfleet.fleet.ray_eval import driver_evaluation

    async with driver_evaluation(cfg) as ev:
        log.info("evaluation %s: %d Ray evaluation actors", ev.url, len(ev.actors))
        return await drive(dataclasses.replace(cfg, eval_url=ev.url, eval_token=ev.token))


def _monitored(listener: Listener | None, monitor: FleetMonitor | None) -> Listener | None:
    """``listener`` that also keeps ``monitor`` up to date, as run_fleet does."""
    if monitor is None:
        return listener

    def feed(event: str, task: Task, outcome: TaskOutcome | None) -> None:
        if event == "start":
            monitor.running[task.id] = time.monotonic()
        elif outcome is not None:
            monitor.record(outcome)
        if listener is not None:
            listener(event, task, outcome)

    return feed


async def _record_only(
    cfg: FleetConfig, config: dict[str, Any], sandbox_urls: list[str] | None
) -> list[TaskOutcome]:
    await ResultsWriter(cfg.run_dir).prepare(config)
    await delete_killed_runs_sandboxes(cfg, sandbox_urls or [cfg.sandbox_url])
    return []
