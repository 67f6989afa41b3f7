"""The fleet runner: up to ``workers`` agents at once on one event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from agentfleet.evaluation.pinning import PinnedSandboxes, worker_cpus
from agentfleet.fleet.agent_run import run_one
from agentfleet.fleet.config import (
    FleetConfig,
    configure_pool,
    pool_limits,
    run_budget,
    run_config,
    select_tasks,
)
from agentfleet.fleet.monitor import FleetMonitor, sample, sample_every
from agentfleet.fleet.outcome import Listener, TaskOutcome
from agentfleet.fleet.results import ResumePlan, plan_resume, repair_tail
from agentfleet.fleet.rundir import RunDir
from agentfleet.fleet.servers import Servers, agent_cpus, embedded_servers
from agentfleet.fleet.writer import ResultsWriter, trajectory
from agentfleet.sandbox.base import Sandboxes
from agentfleet.sandbox.client import SandboxClient
from agentfleet.tasks import Task

log = logging.getLogger("agentfleet.fleet")

# The run loop is here; the rest of a run's parts are re-exported for older imports.
__all__ = [
    "FleetConfig",
    "FleetMonitor",
    "Listener",
    "ResultsWriter",
    "RunPlan",
    "Servers",
    "TaskOutcome",
    "configure_pool",
    "embedded_servers",
    "plan_run",
    "pool_limits",
    "run_budget",
    "run_config",
    "run_fleet",
    "run_one",
    "sample",
    "select_tasks",
    "trajectory",
]


@dataclass
class RunPlan:
    """What one invocation of a run does."""

    tasks: list[Task]  # to run now
    all_ids: list[str]  # the whole run's tasks
    skipped: int  # left out by resume (done, or failed without rerun_failed)
    resumed: ResumePlan | None = None  # with cfg.resume: done / failed / todo task ids


def plan_run(cfg: FleetConfig) -> RunPlan:
    """The config's tasks (model prepared), minus what ``cfg.resume`` finds done in
    ``cfg.run_dir``; ``all_ids`` also holds the resumed run's other tasks
    (``cfg.run_task_ids``). Sync: it reads files (call it off the event loop)."""
    tasks = select_tasks(cfg)
    cfg.model.prepare()
    ids = [t.id for t in tasks]
    if not cfg.resume:
        return RunPlan(tasks, ids, 0)
    repair_tail(RunDir(cfg.run_dir).results)
    plan = plan_resume(cfg.run_dir, ids, rerun_failed=cfg.rerun_failed)
    todo = set(plan.todo)
    whole = list(dict.fromkeys([*(cfg.run_task_ids or []), *ids]))  # -t never narrows it
    return RunPlan([t for t in tasks if t.id in todo], whole, len(plan.skipped), plan)


async def delete_killed_runs_sandboxes(cfg: FleetConfig, urls: Iterable[str | None]) -> None:
    """With ``cfg.resume``: delete, on each of these sandbox servers (None: an embedded one,
    whose reaper does it), the sandboxes labelled with this run that an earlier invocation
    left when it was killed (SIGKILL: no ``finally``)."""
    if not cfg.resume:
        return
    for url in dict.fromkeys(u for u in urls if u is not None):
        left = await SandboxClient(url, token=cfg.sandbox_token).delete_runs({cfg.run_dir.name})
        if left:
            log.warning("deleted %d sandboxes a killed invocation left on %s", len(left), url)


async def run_fleet(
    cfg: FleetConfig,
    listener: Listener | None = None,
    *,
    monitor: FleetMonitor | None = None,
    plan: RunPlan | None = None,
) -> list[TaskOutcome]:
    """Run the config's tasks on this loop (with ``cfg.resume``: only those of
    ``cfg.run_dir`` without a result, plus failed ones with ``cfg.rerun_failed``); returns
    this invocation's outcomes in task order. Listener events: ``"start"`` and ``"done"``
    (with the outcome). ``plan``: :func:`plan_run`'s, if the caller made it already.

    The local backend of :func:`agentfleet.fleet.run.run`, which also writes the summary.
    """
    configure_pool(cfg)  # this loop's pool is made after this (by the first request)
    run = plan if plan is not None else await asyncio.to_thread(plan_run, cfg)
    tasks = run.tasks
    writer = ResultsWriter(cfg.run_dir)
    await writer.prepare(run_config(cfg, run.all_ids, [t.id for t in tasks]))
    mon = monitor if monitor is not None else FleetMonitor()
    mon.total, mon.skipped, mon.started_at = len(tasks), run.skipped, time.monotonic()
    notify = listener or (lambda *_: None)
    gate = asyncio.Semaphore(cfg.workers)
    outcomes: list[TaskOutcome] = []
    pool_stats = writer.files.pool_stats

    async with embedded_servers(cfg) as (sandbox_url, eval_url, token):
        client = SandboxClient(sandbox_url, token=token)
        await delete_killed_runs_sandboxes(cfg, [cfg.sandbox_url])
        sandboxes: Sandboxes = client
        cpus = agent_cpus(cfg)
        if cpus:  # the agents' commands keep off the evaluation workers' CPUs
            sandboxes = PinnedSandboxes(sandboxes)

        async def agent(task: Task) -> None:
            worker_cpus.set(cpus)  # this agent task's context only: its commands' CPUs
            async with gate:
                mon.running[task.id] = time.monotonic()
                notify("start", task, None)
                outcome = await run_one(task, cfg, sandboxes, eval_url, writer, mon)
                outcomes.append(outcome)
                mon.record(outcome)
                notify("done", task, outcome)

        sampler = None
        if cfg.sample_every_s > 0:
            sampler = asyncio.create_task(
                sample_every(mon, eval_url, pool_stats, cfg.sample_every_s),
                name="fleet:sampler",
            )
        try:
            async with asyncio.TaskGroup() as tg:
                for task in tasks:
                    tg.create_task(agent(task), name=f"agent:{task.id}")
        finally:
            if sampler is not None:
                sampler.cancel()
                try:
                    await sampler
                except asyncio.CancelledError:
                    pass
        if sampler is not None:  # a last snapshot with the final counters
            try:
                await sample(mon, eval_url, pool_stats)
            except Exception as exc:
                log.debug("sampler: %s", exc)
    order = {t.id: i for i, t in enumerate(tasks)}
    return sorted(outcomes, key=lambda o: order[o.instance_id])
