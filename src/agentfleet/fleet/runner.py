"""The fleet runner: up to ``workers`` agents at once on one event loop."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from agentfleet.agent import AgentConfig, LightAgent
from agentfleet.evaluation.client import evaluate_info
from agentfleet.evaluation.evaluator import BadSubmission, EvalConfig, Evaluator, sandbox_diff
from agentfleet.evaluation.server import create_app as eval_app
from agentfleet.fleet.attempts import (
    DEFAULT_TASK_ATTEMPTS,
    MODEL_UNAVAILABLE,
    is_transport_failure,
    transient_evaluation,
)
from agentfleet.fleet.mini_agent import mini_trajectory, run_mini
from agentfleet.fleet.results import ResumePlan, plan_resume, repair_tail, result_state
from agentfleet.fleet.rundir import RunDir
from agentfleet.http import HttpPool, PoolLimits, Timeouts, preset_for_fleet, resolve_limits
from agentfleet.models import ModelSpec
from agentfleet.models.pricing import RunBudget
from agentfleet.sandbox.base import (
    DEFAULT_MAX_EXECS,
    CreateSandbox,
    Sandboxes,
    SandboxNotFound,
    new_sandbox_id,
)
from agentfleet.sandbox.client import SandboxClient
from agentfleet.sandbox.env import RemoteDockerEnvironment
from agentfleet.sandbox.server import create_app as sandbox_app
from agentfleet.serving import serve_in_loop
from agentfleet.tasks import DEFAULT_DATASET, DEFAULT_SPLIT, Task, load_dataset

log = logging.getLogger("agentfleet.fleet")


@dataclass
class FleetConfig:
    model: ModelSpec
    run_dir: Path
    dataset: str = DEFAULT_DATASET
    split: str = DEFAULT_SPLIT
    task_ids: list[str] | None = None
    workers: int = 8
    agent: AgentConfig = field(default_factory=AgentConfig)
    sandbox_url: str | None = None
    sandbox_token: str | None = field(default=None, repr=False)  # None: $AGENTFLEET_SANDBOX_TOKEN
    eval_url: str | None = None
    sandbox_ttl_s: float = 3600.0
    sandbox_root: Path | None = None  # embedded process backend's folder
    eval_workers: int | None = None
    eval_repeats: int = 5
    eval_reference: bool = False  # embedded evaluations also time the reference solution
    resume: bool = False  # skip tasks of run_dir that already have a result
    rerun_failed: bool = False  # with resume: run failed tasks again
    sample_every_s: float = 1.0  # pool / evaluation-queue snapshots (0: off)
    pool: PoolLimits | str | None = None  # HTTP pool limits (None: by fleet size, pool_limits)
    task_attempts: int = DEFAULT_TASK_ATTEMPTS  # tries of a task that meets transport faults
    mini: dict[str, Any] | None = None  # --agent mini: mini-swe-agent's config (mini_agent.py)
    # The run's cost budget (agent.run_cost_limit), made by run_budget(); one per process.
    budget: RunBudget | None = field(default=None, repr=False, compare=False)


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


@dataclass
class TaskOutcome:
    instance_id: str
    exit_status: str
    reward: float = 0.0
    speedup: float = 0.0
    steps: int = 0
    duration_s: float = 0.0
    cost: float = 0.0
    error: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1  # > 1: earlier tries met transport faults (fleet.attempts)


Listener = Callable[[str, Task, TaskOutcome | None], None]


@dataclass
class FleetMonitor:
    """Live state of a run, written on the loop by :func:`run_fleet` / :func:`run_one` and
    read by dashboards (possibly from a refresh thread: plain attributes, copied on read).
    """

    total: int = 0  # tasks of this invocation (not counting skipped ones)
    skipped: int = 0  # already complete (resume)
    done: int = 0
    failed: int = 0
    started_at: float = field(default_factory=time.monotonic)
    running: dict[str, float] = field(default_factory=dict)  # task id -> start (monotonic)
    stage: dict[str, str] = field(default_factory=dict)  # task id -> sandbox|agent|diff|eval
    models: dict[str, Any] = field(default_factory=dict)  # task id -> model (live stats)
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=5))
    eval_queue: dict[str, Any] = field(default_factory=dict)  # /healthz: queued, running
    pool: dict[str, Any] = field(default_factory=dict)  # pool totals + open connections
    samples: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.failed

    def eta_s(self, now: float | None = None) -> float | None:
        """Remaining seconds at the observed throughput (None before the first result)."""
        if not self.finished:
            return None
        elapsed = (now or time.monotonic()) - self.started_at
        return elapsed / self.finished * max(0, self.total - self.finished)

    def model_totals(self) -> dict[str, float]:
        """Summed model stats of running and finished agents."""
        calls = prompt = completion = 0
        cost = 0.0
        for model in list(self.models.values()):
            stats = getattr(model, "stats", None)
            calls += int(getattr(stats, "calls", 0))
            prompt += int(getattr(stats, "prompt_tokens", 0))
            completion += int(getattr(stats, "completion_tokens", 0))
            cost += float(getattr(stats, "cost", 0.0))
        return {
            "calls": calls,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cost": cost,
        }

    def record(self, outcome: TaskOutcome) -> None:
        self.running.pop(outcome.instance_id, None)
        self.stage.pop(outcome.instance_id, None)
        if result_state(asdict(outcome)) == "failed":
            self.failed += 1
            why = outcome.error or str(outcome.info.get("error", "")) or outcome.exit_status
            self.errors.append(f"{outcome.instance_id}: {why}"[:300])
        else:
            self.done += 1


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


class Servers(NamedTuple):
    sandbox_url: str
    eval_url: str
    sandbox_token: str | None  # the sandbox server's (None: $AGENTFLEET_SANDBOX_TOKEN)


@asynccontextmanager
async def embedded_servers(cfg: FleetConfig) -> AsyncIterator[Servers]:
    """The sandbox and evaluation servers the config does not point at, on free loopback ports;
    an embedded sandbox server requires a token of its own, made here."""
    # the servers load the bundled datasets and the one this run names, nothing else
    roots = [(await asyncio.to_thread(load_dataset, cfg.dataset)).path]
    async with AsyncExitStack() as stack:
        sandbox_url, token = cfg.sandbox_url, cfg.sandbox_token
        if sandbox_url is None:
            token = secrets.token_urlsafe(32)
            # our own agents only: the exec cap never throttles them (one command each)
            max_execs = max(DEFAULT_MAX_EXECS, 4 * cfg.workers)
            app = sandbox_app(
                root=cfg.sandbox_root, token=token, max_execs=max_execs, dataset_roots=roots
            )
            server = await stack.enter_async_context(serve_in_loop(app))
            sandbox_url = server.url
        eval_url = cfg.eval_url
        if eval_url is None:
            evaluator = Evaluator(
                SandboxClient(sandbox_url, token=token),
                EvalConfig(repeats=cfg.eval_repeats, reference=cfg.eval_reference),
                dataset_roots=roots,
            )
            app = eval_app(evaluator, workers=cfg.eval_workers)
            eval_url = (await stack.enter_async_context(serve_in_loop(app))).url
        yield Servers(sandbox_url, eval_url, token)


class ResultsWriter:
    """Appends one JSON line per finished task (crash-safe) and writes trajectories."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.files = RunDir(run_dir)
        self.results = self.files.results

    def _append(self, line: str) -> None:
        # One write of a whole line, flushed: a crash loses at most the line being written.
        with self.results.open("a") as f:
            f.write(line + "\n")
            f.flush()

    async def prepare(self, config: dict[str, Any]) -> None:
        """Write ``config.json`` (merged on resume); end ``results.jsonl`` with a whole line."""

        def mk() -> None:
            self.files.merge_config(config)
            repair_tail(self.results)  # a crashed run's half line must not swallow ours

        await asyncio.to_thread(mk)

    async def write(self, outcome: TaskOutcome, trajectory: dict[str, Any]) -> None:
        record = asdict(outcome)
        record["state"] = result_state(record)
        line = json.dumps(record, default=str)
        path = self.files.trajectory(outcome.instance_id)
        text = json.dumps(trajectory, indent=1, default=str)
        await asyncio.to_thread(path.write_text, text)
        await asyncio.to_thread(self._append, line)


def trajectory(
    task: Task, outcome: TaskOutcome, messages: list[Any], model: Any, patch: str
) -> dict[str, Any]:
    """mini-swe-agent's .traj.json shape."""
    stats = getattr(model, "stats", None)
    return {
        "trajectory_format": "mini-swe-agent-1",
        "instance_id": task.id,
        "info": {
            "exit_status": outcome.exit_status,
            "submission": patch,
            "model_stats": {
                "instance_cost": getattr(stats, "cost", 0.0),
                "api_calls": getattr(stats, "calls", 0),
                "prompt_tokens": getattr(stats, "prompt_tokens", 0),
                "completion_tokens": getattr(stats, "completion_tokens", 0),
                "possibly_billed": getattr(stats, "possibly_billed", 0),
                "possibly_billed_cost": getattr(stats, "possibly_billed_cost", 0.0),
            },
            "model": getattr(model, "name", ""),
            "reward": outcome.reward,
            "speedup": outcome.speedup,
            "attempts": outcome.attempts,
            "evaluation": outcome.info,
        },
        "messages": messages,
    }


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
        tried = await _try_task(task, cfg, sandboxes, eval_url, monitor, last=n == tries)
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
) -> _Try:
    """One try of :func:`run_one`. Unless ``last``, an agent whose model stayed
    unreachable is not evaluated."""
    stage = monitor.stage if monitor is not None else {}
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
        model = await asyncio.to_thread(  # may read files
            cfg.model.build, task, cost_limit=cfg.agent.cost_limit, budget=run_budget(cfg)
        )
        if monitor is not None:
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
            result = await LightAgent(model, env, task, cfg.agent).run()
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
        reward, speedup, einfo = await evaluate_info(
            exit_status=outcome.exit_status,
            result=patch,
            container_id=sandbox_id,
            instance_id=task.id,
            dataset_name=cfg.dataset,
            split=cfg.split,
            eval_server_url=eval_url,
        )
        outcome.reward, outcome.speedup, outcome.info = reward, speedup, einfo
        transient = transient_evaluation(einfo)
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


def _append_line(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line + "\n")


HEALTH_TIMEOUT = Timeouts(total=5, connect=2, sock_read=5)


async def sample(monitor: FleetMonitor, eval_url: str | None, path: Path | None) -> None:
    """One snapshot: the evaluation server's queue (``/healthz``) and the loop pool's
    connection stats, into ``monitor`` and as one line of ``path`` (pool_stats.jsonl)."""
    pool = HttpPool.for_loop()
    if eval_url:
        try:
            resp = await pool.request(
                "GET", f"{eval_url}/healthz", timeout=HEALTH_TIMEOUT, target="monitor"
            )
            if resp.ok:
                monitor.eval_queue = dict(resp.json())
        except Exception as exc:  # a dashboard must never stop the fleet
            monitor.eval_queue = {"error": f"{type(exc).__name__}"}
    stats = pool.stats()
    totals = stats["totals"]
    snap = {
        "open": pool.open_connections(),
        "created": totals["connections_created"],
        "reused": totals["connections_reused"],
        "in_flight": totals["in_flight"],
        "waiting": totals["waiting"],
        "requests": totals["requests"],
        "retries": totals["retries"],
        "errors": totals["errors_total"],
    }
    monitor.pool = snap
    monitor.samples += 1
    if path is not None:
        line = {
            "t": round(time.time(), 3),
            "elapsed_s": round(time.monotonic() - monitor.started_at, 3),
            **snap,
            "limits": stats["limits"],
            "running_agents": len(monitor.running),
            "finished": monitor.finished,
            "eval_queued": monitor.eval_queue.get("queued"),
            "eval_running": monitor.eval_queue.get("running"),
        }
        await asyncio.to_thread(_append_line, path, json.dumps(line))


async def _sampler(monitor: FleetMonitor, eval_url: str, path: Path, every: float) -> None:
    while True:
        try:
            await sample(monitor, eval_url, path)
        except Exception as exc:
            log.debug("sampler: %s", exc)
        await asyncio.sleep(every)


@dataclass
class RunPlan:
    """What one invocation of a run does."""

    tasks: list[Task]  # to run now
    all_ids: list[str]  # the whole run's tasks
    skipped: int  # left out by resume (done, or failed without rerun_failed)
    resumed: ResumePlan | None = None  # with cfg.resume: done / failed / todo task ids


def plan_run(cfg: FleetConfig) -> RunPlan:
    """The config's tasks (model prepared), minus what ``cfg.resume`` finds done in
    ``cfg.run_dir``. Sync: it reads files (call it off the event loop)."""
    tasks = select_tasks(cfg)
    cfg.model.prepare()
    all_ids = [t.id for t in tasks]
    if not cfg.resume:
        return RunPlan(tasks, all_ids, 0)
    repair_tail(RunDir(cfg.run_dir).results)
    plan = plan_resume(cfg.run_dir, all_ids, rerun_failed=cfg.rerun_failed)
    todo = set(plan.todo)
    return RunPlan([t for t in tasks if t.id in todo], all_ids, len(plan.skipped), plan)


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
        "step_limit": cfg.agent.step_limit,
        "time_limit": cfg.agent.time_limit_s,
        "cost_limit": cfg.agent.cost_limit,
        "run_cost_limit": cfg.agent.run_cost_limit,
        "tasks": all_ids,
        "invocations": [
            {
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "model": cfg.model.spec,
                "resume": cfg.resume,
                "tasks": todo,
            }
        ],
    }


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
        sandboxes = SandboxClient(sandbox_url, token=token)

        async def agent(task: Task) -> None:
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
                _sampler(mon, eval_url, pool_stats, cfg.sample_every_s),
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
