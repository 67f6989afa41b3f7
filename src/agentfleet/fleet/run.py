"""One run, start to end: from what was asked (:class:`RunRequest`, the ``agentfleet run``
flags) to a :class:`~agentfleet.fleet.config.FleetConfig` (:func:`build_config`), and
:func:`run`, which plans the resume, runs the tasks locally or on Ray, and writes the
summary. The CLI parses options, calls these two and prints.

Who owns what:

- the run folder's files: :class:`~agentfleet.fleet.rundir.RunDir`;
- the resume plan: :func:`~agentfleet.fleet.runner.plan_run` (made once, here or by the
  caller, and handed to the backend);
- the HTTP pool limits: :func:`~agentfleet.fleet.config.configure_pool`, applied by the
  owner of the agents' event loop (the local backend, or each Ray actor for its share);
- SIGINT / SIGTERM: :func:`run` stops gracefully on either (every sandbox deleted, the
  results of finished tasks kept) and raises :class:`~agentfleet.serving.Stopped`.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentfleet.agent import AgentConfig
from agentfleet.fleet.attempts import DEFAULT_TASK_ATTEMPTS
from agentfleet.fleet.config import FleetConfig, ray_eval_mode, run_budget
from agentfleet.fleet.image_options import SANDBOX_BACKENDS, image_options
from agentfleet.fleet.monitor import FleetMonitor
from agentfleet.fleet.outcome import Listener, TaskOutcome
from agentfleet.fleet.preds import is_preds_run
from agentfleet.fleet.report import outcome_of, summary
from agentfleet.fleet.results import latest_results, spent_usd
from agentfleet.fleet.rundir import RunDir, chosen_run, run_name
from agentfleet.fleet.runner import RunPlan, plan_run, run_fleet
from agentfleet.fleet.servers import check_eval_server
from agentfleet.http import resolve_limits
from agentfleet.http.urls import url_problem
from agentfleet.models import ModelSpec
from agentfleet.serving import graceful_stop, run_async
from agentfleet.tasks import DEFAULT_DATASET, DEFAULT_SPLIT, load_dataset
from agentfleet.tasks.task import RowsDataset

__all__ = [
    "DEFAULT_SHARDS",
    "RayOptions",
    "RunRequest",
    "RunResult",
    "build_config",
    "run",
]

DEFAULT_SHARDS = 2  # Ray actors of a run

# Settings a resumed run takes from its config.json when not given again, and their
# defaults for a new run (None: the --agent-config file's value, else AgentConfig's).
RESUMABLE: dict[str, Any] = {
    "dataset": DEFAULT_DATASET,
    "split": DEFAULT_SPLIT,
    "model": "oracle",
    "model_url": None,
    "model_delay": 0.0,
    "agent": "light",
    "workers": 8,
    "tasks": None,
    "eval_repeats": None,  # each task's benchmark protocol, else DEFAULT_EVAL_REPEATS
    "eval_reference": False,
    "eval_early_stop": True,
    "step_limit": None,
    "time_limit": None,
    "cost_limit": None,
    "run_cost_limit": None,
}


@dataclass
class RayOptions:
    """The Ray backend: ``shards`` actors; actor ``i`` uses ``sandbox_urls[i % n]``."""

    shards: int = DEFAULT_SHARDS
    address: str | None = None
    sandbox_urls: list[str] | None = None
    eval_on: str | None = None  # actors | shards (None: fleet.config.ray_eval_mode's)


@dataclass
class RunRequest:
    """What ``agentfleet run`` was asked. ``None`` (and an empty ``tasks``): on resume the
    value saved in the run's ``config.json``, else the default of :data:`RESUMABLE`."""

    dataset: str | None = None
    split: str | None = None
    model: str | None = None
    model_url: str | None = None
    model_delay: float | None = None
    agent: str | None = None  # light | mini
    workers: int | None = None
    tasks: list[str] | None = None
    eval_repeats: int | None = None
    eval_reference: bool | None = None
    eval_early_stop: bool | None = None
    step_limit: int | None = None
    time_limit: float | None = None
    cost_limit: float | None = None
    run_cost_limit: float | None = None
    agent_config: Path | None = None
    run_dir: Path | None = None
    resume: Path | None = None
    rerun_failed: bool = False
    task_attempts: int | None = None  # None: DEFAULT_TASK_ATTEMPTS
    sandbox_urls: list[str] = field(default_factory=list)
    sandbox_token: str | None = field(default=None, repr=False)  # of the --sandbox-url servers
    eval_url: str | None = None
    sandbox_root: Path | None = None
    pool: str | None = None
    backend: str = "local"
    ray_address: str | None = None
    shards: int | None = None
    ray_eval: str | None = None  # actors | shards (None: ray_eval_mode's default)
    # image tasks (real benchmarks): the embedded sandbox backend and image options
    sandbox_backend: str | None = None  # None: docker for image tasks, else process
    image_map: Path | None = None
    registry_prefix: str | None = None
    pull: str | None = None  # never | missing | always (default missing)

    def settings(self, saved: dict[str, Any]) -> dict[str, Any]:
        """Each :data:`RESUMABLE` setting: as given, else as ``saved``, else the default."""
        out = {}
        for key, default in RESUMABLE.items():
            value = getattr(self, key)
            if key == "tasks" and not value:
                value = None
            if value is None:
                value = saved.get(key) if saved.get(key) is not None else default
            out[key] = value
        return out


def _check_urls(req: RunRequest) -> None:
    """Every server URL is an absolute http(s) URL (else each task would fail on it)."""
    given: list[tuple[str, str | None]] = [("--sandbox-url", u) for u in req.sandbox_urls]
    given += [("--eval-url", req.eval_url), ("--model-url", req.model_url)]
    for option, url in given:
        if (problem := url_problem(option, url)) is not None:
            raise ValueError(problem)


def build_config(req: RunRequest) -> tuple[FleetConfig, RayOptions | None]:
    """The run's config (and Ray options with ``backend="ray"``); names a new run
    ``runs/<dataset>-<split>-<model>-<time>``. ``ValueError`` / ``LookupError`` / ``OSError``
    with a message for the user on bad input. Sync: it reads files."""
    run_dir, saved = chosen_run(req.run_dir, req.resume, req.rerun_failed)
    if req.resume is not None and is_preds_run(saved):
        raise ValueError(
            f"cannot resume {req.resume} with run: `agentfleet eval preds` made it "
            "(predictions evaluated, no agent); continue it with `agentfleet eval preds "
            f"PREDS.json --resume {req.resume}`"
        )
    _check_urls(req)
    s = req.settings(saved)
    dataset = load_dataset(s["dataset"])
    dataset.task_ids(s["split"])  # the dataset and split exist
    # rows of a real benchmark are in memory; folder tasks naming an image need
    # --sandbox-backend docker (reading every task.yaml here would block a caller's loop)
    rows = dataset.tasks(s["split"]) if isinstance(dataset, RowsDataset) else []
    images = image_options(req, rows, saved)  # before Ray: a clearer error
    ray = _ray_options(req)
    spec = ModelSpec(s["model"], url=s["model_url"], delay_s=float(s["model_delay"]))
    spec.prepare()
    mini = _mini_config(s["agent"], req.agent_config, saved)
    agent = AgentConfig.from_yaml(
        req.agent_config if mini is None else None,
        step_limit=s["step_limit"],
        time_limit_s=s["time_limit"],
        cost_limit=s["cost_limit"],
        run_cost_limit=s["run_cost_limit"],
    )
    cfg = FleetConfig(
        model=spec,
        run_dir=run_dir or Path("runs") / run_name(s["dataset"], s["split"], s["model"]),
        dataset=s["dataset"],
        split=s["split"],
        task_ids=list(s["tasks"]) if s["tasks"] else None,
        workers=int(s["workers"]),
        agent=agent,
        sandbox_url=req.sandbox_urls[0] if req.sandbox_urls else None,
        sandbox_token=req.sandbox_token,
        eval_url=req.eval_url,
        eval_repeats=None if s["eval_repeats"] is None else int(s["eval_repeats"]),
        eval_reference=bool(s["eval_reference"]),
        eval_early_stop=bool(s["eval_early_stop"]),
        sandbox_root=req.sandbox_root,
        resume=req.resume is not None,
        rerun_failed=req.rerun_failed,
        pool=resolve_limits(req.pool) if req.pool is not None else None,
        task_attempts=req.task_attempts or DEFAULT_TASK_ATTEMPTS,
        mini=mini,
        **images,
    )
    if req.resume is not None:
        _resumed(cfg, saved)
    if ray is not None:
        ray_eval_mode(req.ray_eval, cfg)  # a bad --ray-eval fails here, before Ray starts
        ray.eval_on = req.ray_eval
    return cfg, ray


def _resumed(cfg: FleetConfig, saved: dict[str, Any]) -> None:
    """What a resume carries over: the whole run's tasks (a resume's ``-t`` runs some of
    them, or adds some; it never narrows the run), and what the run's models spent so far,
    against ``--run-cost-limit`` (USD for the whole run, every invocation's)."""
    tasks = saved.get("tasks")
    if isinstance(tasks, list) and all(isinstance(t, str) for t in tasks):
        cfg.run_task_ids = list(tasks)
    budget = run_budget(cfg)
    if budget is not None:
        budget.spent = spent_usd(cfg.run_dir)


def _mini_config(agent: str, path: Path | None, saved: dict[str, Any]) -> dict[str, Any] | None:
    """``--agent mini``'s mini-swe-agent config: ``path``'s, else a resumed run's, else
    mini-swe-agent's default; None for LightAgent."""
    if agent == "light":
        return None
    if agent != "mini":
        raise ValueError(f"unknown agent {agent!r}: light or mini")
    if path is None and isinstance(saved.get("mini_config"), dict):
        return dict(saved["mini_config"])
    from agentfleet.fleet.mini_agent import load_mini_config

    return load_mini_config(path)


def _ray_options(req: RunRequest) -> RayOptions | None:
    if req.backend in SANDBOX_BACKENDS:
        raise ValueError(
            f"--backend {req.backend}: --backend is where agents run (local or ray); "
            f"the sandboxes' backend is --sandbox-backend {req.backend}"
        )
    if req.backend not in ("local", "ray"):
        raise ValueError(f"unknown backend {req.backend!r}: local or ray")
    if req.backend == "local":
        if len(req.sandbox_urls) > 1:
            raise ValueError(
                "several --sandbox-url need --backend ray (one sandbox server per actor)"
            )
        if req.ray_address is not None or req.shards is not None or req.ray_eval is not None:
            raise ValueError("--ray-address, --shards and --ray-eval need --backend ray")
        return None
    if importlib.util.find_spec("ray") is None:
        raise ValueError("the ray backend needs Ray: pip install 'agentfleet[ray]'")
    return RayOptions(req.shards or DEFAULT_SHARDS, req.ray_address, list(req.sandbox_urls) or None)


@dataclass
class RunResult:
    outcomes: list[TaskOutcome]  # in task order; on resume the whole run's, earlier ones too
    summary: dict[str, Any]  # as written to summary.json
    monitor: FleetMonitor  # this invocation's counters (done, failed, skipped...)


def run(
    cfg: FleetConfig,
    *,
    ray: RayOptions | None = None,
    plan: RunPlan | None = None,
    listener: Listener | None = None,
    monitor: FleetMonitor | None = None,
) -> RunResult:
    """Run ``cfg`` to the end, locally (``ray=None``) or on Ray, and write ``summary.json``.

    ``plan``: :func:`~agentfleet.fleet.runner.plan_run`'s, when the caller made it to show
    it first. A resume with nothing left to run runs nothing and only sums up the run.
    The summary covers the whole run (on resume: every task with a result) and its wall
    time adds up every invocation. Call from sync code, in the main thread for signals.

    Raises:
        ServerUnreachable: ``cfg.eval_url`` does not answer (checked before any task).
        Stopped: on SIGINT or SIGTERM, once every sandbox is deleted; the results of the
            tasks that finished are in ``results.jsonl``, no summary is written.
        LookupError: a task id not in the dataset split.
    """
    monitor = monitor if monitor is not None else FleetMonitor()
    start = time.monotonic()
    files = RunDir(cfg.run_dir)
    try:
        with graceful_stop():
            outcomes, plan = _run_tasks(cfg, ray, plan, listener, monitor)
    finally:  # stopped too: the run's wall time counts every invocation
        files.record_wall(cfg.invocation, time.monotonic() - start)
    wall_s, legacy_s = files.wall_s()
    if cfg.resume:  # the whole run, not just this part
        latest = latest_results(cfg.run_dir)
        outcomes = [outcome_of(latest[i]) for i in plan.all_ids if i in latest]
    figures = summary(outcomes, wall_s or time.monotonic() - start)
    if legacy_s:
        figures["legacy_wall_s"] = legacy_s
    files.write_summary(figures)
    return RunResult(outcomes, figures, monitor)


def _run_tasks(
    cfg: FleetConfig,
    ray: RayOptions | None,
    plan: RunPlan | None,
    listener: Listener | None,
    monitor: FleetMonitor,
) -> tuple[list[TaskOutcome], RunPlan]:
    """This invocation's outcomes, locally or on Ray (none for a resume with nothing
    left), and its plan."""
    plan = plan if plan is not None else plan_run(cfg)
    if cfg.resume and not plan.tasks:
        return [], plan
    if cfg.eval_url is not None:  # before any agent spends on a task it cannot score
        run_async(check_eval_server(cfg.eval_url, cfg.eval_token))
    if ray is None:
        return run_async(run_fleet(cfg, listener, monitor=monitor, plan=plan)), plan
    from agentfleet.fleet.ray_backend import run_fleet_ray  # imports ray

    outcomes = run_fleet_ray(
        cfg,
        shards=ray.shards,
        address=ray.address,
        sandbox_urls=ray.sandbox_urls,
        eval_on=ray.eval_on,
        listener=listener,
        monitor=monitor,
        plan=plan,
    )
    return outcomes, plan
