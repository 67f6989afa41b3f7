"""One agent on one task: sandbox, agent loop, evaluation, and fresh tries after transport
faults; the sandbox is deleted whatever happens."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, NamedTuple

from agentfleet.agent import LightAgent
from agentfleet.evaluation.client import evaluate_info
from agentfleet.evaluation.evaluator import BadSubmission, sandbox_diff
from agentfleet.fleet.attempts import (
    MODEL_UNAVAILABLE,
    is_transport_failure,
    transient_evaluation,
)
from agentfleet.fleet.config import FleetConfig, run_budget
from agentfleet.fleet.mini_agent import mini_trajectory, run_mini
from agentfleet.fleet.monitor import FleetMonitor
from agentfleet.fleet.outcome import TaskOutcome
from agentfleet.fleet.preds import PredictedModel
from agentfleet.fleet.writer import ResultsWriter, trajectory
from agentfleet.sandbox.base import (
    CreateSandbox,
    Sandboxes,
    SandboxNotFound,
    new_sandbox_id,
)
from agentfleet.sandbox.env import RemoteDockerEnvironment
from agentfleet.tasks import Task

log = logging.getLogger("agentfleet.fleet")


async def run_one(
    task: Task,
    cfg: FleetConfig,
    sandboxes: Sandboxes,
    eval_url: str,
    writer: ResultsWriter,
    monitor: FleetMonitor | None = None,
) -> TaskOutcome:
    """One agent: sandbox, agent loop, evaluation; the sandbox is deleted in ``finally``.

    A try that meets a transport fault (:mod:`agentfleet.fleet.attempts`) starts over with
    a fresh sandbox and agent, up to ``cfg.task_attempts`` tries; the outcome records
    them (``attempts``) and the cost of all. With a ``monitor``, the agent's model (live
    token / cost stats) and stage are shown there.
    """
    start = time.monotonic()
    tries = max(1, cfg.task_attempts)
    cost = 0.0
    for n in range(1, tries + 1):
        tried = await _try_task(
            task, cfg, sandboxes, eval_url, monitor, last=n == tries, spent=cost
        )
        outcome = tried.outcome
        cost += float(getattr(getattr(tried.model, "stats", None), "cost", 0.0))
        if not tried.transient or n == tries:
            break
        log.warning(
            "task %s: try %d of %d met a transport fault (%s); starting over with a fresh sandbox",
            task.id,
            n,
            tries,
            outcome.error or outcome.info.get("error") or outcome.exit_status,
        )
    outcome.attempts = n
    outcome.duration_s = time.monotonic() - start
    outcome.cost = cost
    traj = trajectory(task, outcome, tried.messages, tried.model, tried.patch)
    await writer.write(outcome, mini_trajectory(tried.result, traj))
    return outcome


class _Try(NamedTuple):
    """One try of :func:`run_one`."""

    outcome: TaskOutcome
    messages: list[Any]
    model: Any
    patch: str
    transient: bool  # met a transport fault: worth another try
    result: Any  # the agent's result (mini-swe-agent's, for its trajectory format)


async def _try_task(
    task: Task,
    cfg: FleetConfig,
    sandboxes: Sandboxes,
    eval_url: str,
    monitor: FleetMonitor | None,
    *,
    last: bool,
    spent: float = 0.0,
) -> _Try:
    """One try of :func:`run_one`. Unless ``last``, an agent whose model stayed
    unreachable is not evaluated. ``spent``: what the task's earlier tries cost (its
    ``cost_limit`` is the task's, whatever the tries)."""
    stage = monitor.stage if monitor is not None else {}
    if cfg.predictions is not None:
        return await _try_prediction(task, cfg, eval_url)
    outcome = TaskOutcome(task.id, "Error")
    messages: list[Any] = []
    patch = ""
    model: Any = None
    transient = False
    result: Any = None
    # chosen here, so the finally deletes it even if create never answered (Ctrl-C)
    sandbox_id = new_sandbox_id()
    create_sent = False
    try:
        stage[task.id] = "sandbox"
        limit = cfg.agent.cost_limit
        limit = None if limit is None else max(0.0, limit - spent)
        model = await asyncio.to_thread(  # may read files
            cfg.model.build, task, cost_limit=limit, budget=run_budget(cfg)
        )
        if monitor is not None:
            if (before := monitor.models.get(task.id)) is not None:
                monitor.earlier.append(before)  # the run's totals keep its cost
            monitor.models[task.id] = model
        create_sent = True
        info = await sandboxes.create(
            CreateSandbox(
                sandbox_id=sandbox_id,
                task_id=task.id,
                dataset=cfg.dataset,
                ttl_s=cfg.sandbox_ttl_s,
                run=cfg.run_dir.name,
            )
        )
        sandbox_id = info.sandbox_id
        env = RemoteDockerEnvironment(sandbox_id, sandboxes=sandboxes)
        stage[task.id] = "agent"
        if cfg.mini is not None:
            result = await run_mini(cfg.mini, model, sandboxes, sandbox_id, task, cfg.agent)
        else:
            agent = LightAgent(model, env, task, cfg.agent)
            messages = agent.messages  # kept in the trajectory should run() raise
            result = await agent.run()
        messages, outcome.exit_status, outcome.steps = (
            result.messages,
            result.exit_status,
            result.steps,
        )
        outcome.error = result.error
        if result.exit_status == MODEL_UNAVAILABLE and not last:
            return _Try(outcome, messages, model, patch, True, result)
        stage[task.id] = "diff"
        try:
            patch = await sandbox_diff(sandboxes, sandbox_id)
        except BadSubmission as exc:  # evaluated as an empty change; the reason is kept
            log.warning("task %s: %s", task.id, exc)
            outcome.error = outcome.error or str(exc)
        stage[task.id] = "eval"
        transient = await _evaluate(outcome, task, cfg, eval_url, patch, sandbox_id)
    except Exception as exc:  # one agent's failure must not stop the fleet
        log.exception("task %s failed", task.id)
        outcome.error = f"{type(exc).__name__}: {exc}"
        transient = is_transport_failure(exc)
    finally:
        if create_sent:
            try:
                await asyncio.shield(sandboxes.delete(sandbox_id))
            except SandboxNotFound:
                pass  # never made (create failed or was cancelled early)
            except Exception as exc:
                log.warning("could not delete sandbox %s: %s", sandbox_id, exc)
    return _Try(outcome, messages, model, patch, transient, result)


async def _evaluate(
    outcome: TaskOutcome,
    task: Task,
    cfg: FleetConfig,
    eval_url: str,
    patch: str,
    container_id: str | None,
) -> bool:
    """Evaluate ``patch`` into ``outcome`` (reward, speedup, info); True when the job
    failed on a transport fault, so another try of the task may help
    (:func:`transient_evaluation`)."""
    reward, speedup, einfo = await evaluate_info(
        exit_status=outcome.exit_status,
        result=patch,
        container_id=container_id,
        instance_id=task.id,
        dataset_name=cfg.dataset,
        split=cfg.split,
        eval_server_url=eval_url,
        token=cfg.eval_token,
    )
    outcome.reward, outcome.speedup, outcome.info = reward, speedup, einfo
    return transient_evaluation(einfo)


async def _try_prediction(task: Task, cfg: FleetConfig, eval_url: str) -> _Try:
    """``eval preds``: the task's predicted patch evaluated as it is, no sandbox, no agent."""
    assert cfg.predictions is not None
    pred = cfg.predictions.get(task.id)
    model = PredictedModel(pred.model if pred is not None else "")
    patch = pred.patch if pred is not None else None
    outcome = TaskOutcome(task.id, "Submitted" if patch is not None else "NoPatch")
    transient = False
    try:
        transient = await _evaluate(outcome, task, cfg, eval_url, patch or "", None)
    except Exception as exc:
        log.exception("task %s: evaluation failed", task.id)
        outcome.error = f"{type(exc).__name__}: {exc}"
        transient = is_transport_failure(exc)
    return _Try(outcome, [], model, patch or "", transient, None)
