"""A run's settings (:class:`FleetConfig`), what follows from them (pool limits, cost budget,
the tasks) and the ``config.json`` that records them."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentfleet.agent import AgentConfig
from agentfleet.evaluation.config import EvalConfig
from agentfleet.fleet.attempts import DEFAULT_TASK_ATTEMPTS
from agentfleet.fleet.image_options import saved_image_options
from agentfleet.http import HttpPool, PoolLimits, preset_for_fleet, resolve_limits
from agentfleet.models import ModelSpec
from agentfleet.models.pricing import RunBudget
from agentfleet.sandbox.base import DEFAULT_TTL_S
from agentfleet.sandbox.image_box import ImageNaming, PullPolicy
from agentfleet.tasks import DEFAULT_DATASET, DEFAULT_SPLIT, Task, load_dataset
from agentfleet.tasks.defaults import DEFAULT_EARLY_STOP_ROUNDS

RAY_EVAL = ("actors", "shards")  # where a Ray run's embedded evaluations run (ray_eval.py)


@dataclass
class FleetConfig:
    model: ModelSpec
    run_dir: Path
    dataset: str = DEFAULT_DATASET
    split: str = DEFAULT_SPLIT
    task_ids: list[str] | None = None
    # on resume: the whole run's tasks (its config.json's); a resume's -t adds, never narrows
    run_task_ids: list[str] | None = None
    workers: int = 8
    agent: AgentConfig = field(default_factory=AgentConfig)
    sandbox_url: str | None = None
    sandbox_token: str | None = field(default=None, repr=False)  # None: $AGENTFLEET_SANDBOX_TOKEN
    eval_url: str | None = None
    eval_token: str | None = field(default=None, repr=False)  # None: $AGENTFLEET_EVAL_TOKEN
    sandbox_ttl_s: float = DEFAULT_TTL_S
    sandbox_root: Path | None = None  # embedded process backend's folder
    eval_workers: int | None = None
    eval_repeats: int | None = None  # None: each task's benchmark protocol, else the default
    eval_reference: bool = False  # embedded evaluations also time the reference solution
    eval_early_stop: bool = True  # embedded evaluations stop once the reward is decided
    resume: bool = False  # skip tasks of run_dir that already have a result
    rerun_failed: bool = False  # with resume: run failed tasks again
    sample_every_s: float = 1.0  # pool / evaluation-queue snapshots (0: off)
    pool: PoolLimits | str | None = None  # HTTP pool limits (None: by fleet size, pool_limits)
    task_attempts: int = DEFAULT_TASK_ATTEMPTS  # tries of a task that meets transport faults
    mini: dict[str, Any] | None = None  # --agent mini: mini-swe-agent's config (mini_agent.py)
    # `eval preds`: each task's patch from a predictions file, evaluated with no agent (preds.py)
    predictions: dict[str, Any] | None = None
    # the embedded sandbox server's backend (docker for image tasks), image renaming, pulls
    sandbox_backend: str = "process"
    image_naming: ImageNaming = field(default_factory=ImageNaming)
    pull: PullPolicy = "missing"
    # The run's cost budget (agent.run_cost_limit), made by run_budget(); one per process.
    budget: RunBudget | None = field(default=None, repr=False, compare=False)
    # this invocation's id in config.json's "invocations" (its wall time is recorded there)
    invocation: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


def eval_config(cfg: FleetConfig) -> EvalConfig:
    """The settings of a run's embedded evaluations."""
    return EvalConfig(
        repeats=cfg.eval_repeats,
        reference=cfg.eval_reference,
        early_stop_rounds=DEFAULT_EARLY_STOP_ROUNDS if cfg.eval_early_stop else None,
    )


def pool_limits(cfg: FleetConfig) -> PoolLimits:
    """The HTTP pool limits of a loop running ``cfg.workers`` agents: ``cfg.pool``, else the
    preset for that many agents (:func:`~agentfleet.http.preset_for_fleet`)."""
    return resolve_limits(cfg.pool) if cfg.pool is not None else preset_for_fleet(cfg.workers)


def configure_pool(cfg: FleetConfig) -> PoolLimits:
    """Set :func:`pool_limits` as the default of the pools made from now on in this process.

    The one place a run's pool is configured: called by whoever owns the event loop the
    agents run on (:func:`run_fleet` locally, each Ray actor for its share of the agents).
    """
    limits = pool_limits(cfg)
    HttpPool.configure_default(limits)
    return limits


def run_budget(cfg: FleetConfig) -> RunBudget | None:
    """The one RunBudget shared by every model of the run (None without a run cost limit)."""
    if cfg.budget is None and cfg.agent.run_cost_limit is not None:
        cfg.budget = RunBudget(cfg.agent.run_cost_limit)
    return cfg.budget


def ray_eval_mode(asked: str | None, cfg: FleetConfig) -> str:
    """Where a Ray run's embedded evaluations run (``--ray-eval``): ``actors``, Ray
    evaluation actors (one per CPU of the cluster) leasing from one evaluation server in
    the driver; ``shards``, an evaluation server with local workers in each shard. Default
    ``actors``, but ``shards`` for image tasks (docker sandboxes: the actors time in process
    sandboxes) and ``shards`` (unused) with ``--eval-url``. ``ValueError`` on a combination
    that cannot work."""
    if asked is not None and asked not in RAY_EVAL:
        raise ValueError(f"--ray-eval {asked!r}: actors or shards")
    if cfg.eval_url is not None:
        if asked is not None:
            raise ValueError("--ray-eval is for embedded evaluations: not with --eval-url")
        return "shards"
    if cfg.sandbox_backend == "docker":
        if asked == "actors":
            raise ValueError(
                "--ray-eval actors times in process sandboxes; image tasks (docker) need "
                "--ray-eval shards or an --eval-url"
            )
        return "shards"
    return asked or "actors"


def select_tasks(cfg: FleetConfig) -> list[Task]:
    dataset = load_dataset(cfg.dataset)
    tasks = dataset.tasks(cfg.split)
    if cfg.task_ids:
        known = {t.id for t in tasks}
        missing = [t for t in cfg.task_ids if t not in known]
        if missing:
            raise LookupError(f"not in {cfg.dataset}/{cfg.split}: {', '.join(missing)}")
        tasks = [t for t in tasks if t.id in set(cfg.task_ids)]
    return tasks


def run_config(cfg: FleetConfig, all_ids: list[str], todo: list[str]) -> dict[str, Any]:
    """config.json of a run: ``all_ids`` the whole run's tasks, ``todo`` this invocation's."""
    return {
        "dataset": cfg.dataset,
        "split": cfg.split,
        "model": cfg.model.spec,
        "model_url": cfg.model.url,
        "model_delay": cfg.model.delay_s,
        "workers": cfg.workers,
        "agent": "light" if cfg.mini is None else "mini",
        "mini_config": cfg.mini,
        "eval_repeats": cfg.eval_repeats,
        "eval_reference": cfg.eval_reference,
        "eval_early_stop": cfg.eval_early_stop,
        "step_limit": cfg.agent.step_limit,
        "time_limit": cfg.agent.time_limit_s,
        "cost_limit": cfg.agent.cost_limit,
        "run_cost_limit": cfg.agent.run_cost_limit,
        "tasks": all_ids,
        **saved_image_options(cfg.sandbox_backend, cfg.image_naming, cfg.pull),
        "invocations": [
            {
                "id": cfg.invocation,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "model": cfg.model.spec,
                "resume": cfg.resume,
                "tasks": todo,
            }
        ],
    }
