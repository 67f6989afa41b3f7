"""The fleet runner: up to ``workers`` agents at once on one event loop."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agentfleet.agent import AgentConfig, LightAgent
from agentfleet.evaluation.client import evaluate_info
from agentfleet.evaluation.evaluator import EvalConfig, Evaluator
from agentfleet.evaluation.server import create_app as eval_app
from agentfleet.models import ModelSpec
from agentfleet.sandbox.base import CreateSandbox, Sandboxes
from agentfleet.sandbox.client import SandboxClient
from agentfleet.sandbox.env import RemoteDockerEnvironment
from agentfleet.sandbox.server import create_app as sandbox_app
from agentfleet.serving import serve_in_loop
from agentfleet.tasks import Task, load_dataset

log = logging.getLogger("agentfleet.fleet")

# Stages every new file, diffs against the base commit, unstages: the agent's whole change.
DIFF_COMMAND = "git add -A && git -c core.quotepath=off diff --cached --binary; git reset -q"


@dataclass
class FleetConfig:
    model: ModelSpec
    run_dir: Path
    dataset: str = "perf-lite"
    split: str = "test"
    task_ids: list[str] | None = None
    workers: int = 8
    agent: AgentConfig = field(default_factory=AgentConfig)
    sandbox_url: str | None = None
    eval_url: str | None = None
    sandbox_ttl_s: float = 3600.0
    sandbox_root: Path | None = None  # embedded process backend's folder
    eval_workers: int | None = None
    eval_repeats: int = 5


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


Listener = Callable[[str, Task, TaskOutcome | None], None]


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


@asynccontextmanager
async def embedded_servers(cfg: FleetConfig) -> AsyncIterator[tuple[str, str]]:
    """The sandbox and evaluation servers the config does not point at, on free loopback ports."""
    async with AsyncExitStack() as stack:
        sandbox_url = cfg.sandbox_url
        if sandbox_url is None:
            app = sandbox_app(root=cfg.sandbox_root)
            server = await stack.enter_async_context(serve_in_loop(app))
            sandbox_url = server.url
        eval_url = cfg.eval_url
        if eval_url is None:
            evaluator = Evaluator(SandboxClient(sandbox_url), EvalConfig(repeats=cfg.eval_repeats))
            app = eval_app(evaluator, workers=cfg.eval_workers)
            eval_url = (await stack.enter_async_context(serve_in_loop(app))).url
        yield sandbox_url, eval_url


class ResultsWriter:
    """Appends one JSON line per finished task (crash-safe) and writes trajectories."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.results = run_dir / "results.jsonl"
        self.traj_dir = run_dir / "trajectories"

    def _append(self, line: str) -> None:
        with self.results.open("a") as f:
            f.write(line + "\n")

    async def prepare(self, config: dict[str, Any]) -> None:
        def mk() -> None:
            self.traj_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))

        await asyncio.to_thread(mk)

    async def write(self, outcome: TaskOutcome, trajectory: dict[str, Any]) -> None:
        line = json.dumps(asdict(outcome), default=str)
        path = self.traj_dir / f"{outcome.instance_id}.traj.json"
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
            },
            "model": getattr(model, "name", ""),
            "reward": outcome.reward,
            "speedup": outcome.speedup,
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
) -> TaskOutcome:
    """One agent: sandbox, agent loop, evaluation; the sandbox is deleted in ``finally``."""
    start = time.monotonic()
    outcome = TaskOutcome(task.id, "Error")
    messages: list[Any] = []
    patch = ""
    model: Any = None
    sandbox_id: str | None = None
    try:
        model = await asyncio.to_thread(cfg.model.build, task)  # may read files
        info = await sandboxes.create(
            CreateSandbox(
                task_id=task.id, dataset=cfg.dataset, ttl_s=cfg.sandbox_ttl_s, run=cfg.run_dir.name
            )
        )
        sandbox_id = info.sandbox_id
        env = RemoteDockerEnvironment(sandbox_id, sandboxes=sandboxes)
        result = await LightAgent(model, env, task, cfg.agent).run()
        messages, outcome.exit_status, outcome.steps = (
            result.messages,
            result.exit_status,
            result.steps,
        )
        outcome.error = result.error
        diff = await sandboxes.exec(sandbox_id, DIFF_COMMAND, timeout=60)
        patch = diff.output if diff.returncode == 0 else ""
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
    except Exception as exc:  # one agent's failure must not stop the fleet
        log.exception("task %s failed", task.id)
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        if sandbox_id is not None:
            try:
                await asyncio.shield(sandboxes.delete(sandbox_id))
            except Exception as exc:
                log.warning("could not delete sandbox %s: %s", sandbox_id, exc)
    outcome.duration_s = time.monotonic() - start
    outcome.cost = float(getattr(getattr(model, "stats", None), "cost", 0.0))
    await writer.write(outcome, trajectory(task, outcome, messages, model, patch))
    return outcome


async def run_fleet(cfg: FleetConfig, listener: Listener | None = None) -> list[TaskOutcome]:
    tasks = await asyncio.to_thread(select_tasks, cfg)
    await asyncio.to_thread(cfg.model.prepare)
    writer = ResultsWriter(cfg.run_dir)
    await writer.prepare(
        {
            "dataset": cfg.dataset,
            "split": cfg.split,
            "model": cfg.model.spec,
            "workers": cfg.workers,
            "tasks": [t.id for t in tasks],
        }
    )
    notify = listener or (lambda *_: None)
    gate = asyncio.Semaphore(cfg.workers)
    outcomes: list[TaskOutcome] = []

    async with embedded_servers(cfg) as (sandbox_url, eval_url):
        sandboxes = SandboxClient(sandbox_url)

        async def agent(task: Task) -> None:
            async with gate:
                notify("start", task, None)
                outcome = await run_one(task, cfg, sandboxes, eval_url, writer)
                outcomes.append(outcome)
                notify("done", task, outcome)

        async with asyncio.TaskGroup() as tg:
            for task in tasks:
                tg.create_task(agent(task), name=f"agent:{task.id}")
    order = {t.id: i for i, t in enumerate(tasks)}
    return sorted(outcomes, key=lambda o: order[o.instance_id])
