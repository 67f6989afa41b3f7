"""``agentfleet run``: its options, and what it prints. The run itself is
:func:`agentfleet.fleet.run.run`; the main command registers :func:`run`."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from agentfleet._cli import (
    MAX_WORKERS,
    ImageMapOpt,
    PullOpt,
    RegistryPrefixOpt,
    SandboxBackendOpt,
    SandboxRootOpt,
    VerboseOpt,
    console,
    err,
    fail,
    setup_logging,
)
from agentfleet.sandbox.base import MAX_TTL_S
from agentfleet.tasks.defaults import (
    DEFAULT_DATASET,
    DEFAULT_EVAL_REPEATS,
    DEFAULT_SPLIT,
    MAX_EVAL_REPEATS,
)

__all__ = ["run"]


def _default(value: object) -> str:
    """`` [default: VALUE]`` for a help text, its bracket escaped: rich (typer's help) reads
    an unescaped ``[...]`` as markup and drops it."""
    return f" \\[default: {value}]"


ProgressOpt = Annotated[
    str,
    typer.Option(
        help="rich (live dashboard) | plain (a line per event) | none; "
        "auto: rich on a terminal, else plain"
    ),
]
RunDirOpt = Annotated[Path | None, typer.Option(help="run folder (default runs/<name>)")]
EvalRepeatsOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        max=MAX_EVAL_REPEATS,
        help="timed runs per side in embedded evaluations; unset: a real benchmark's "
        "task keeps its own protocol (SWE-Perf 20, GSO 5), others" + _default(DEFAULT_EVAL_REPEATS),
    ),
]


def run(
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset", "-d", help="bundled name or folder path" + _default(DEFAULT_DATASET)
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option("--split", "-s", help="split of the dataset" + _default(DEFAULT_SPLIT)),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="oracle | scripted:FILE | openai/NAME | openrouter/NAME \\[default: oracle]",
        ),
    ] = None,
    model_url: Annotated[
        str | None, typer.Option(help="base URL of an OpenAI-compatible API")
    ] = None,
    model_delay: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=3600.0, help="seconds added per offline model reply \\[default: 0]"
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", "-w", min=1, max=MAX_WORKERS, help="agents at once \\[default: 8]"
        ),
    ] = None,
    task: Annotated[
        list[str] | None, typer.Option("--task", "-t", help="only these task ids")
    ] = None,
    run_dir: RunDirOpt = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="continue this run folder: run only its tasks without a result (its "
            "config.json gives dataset, split, model and tasks unless overridden)",
        ),
    ] = None,
    rerun_failed: Annotated[
        bool, typer.Option(help="with --resume: also run again the tasks that failed")
    ] = False,
    task_attempts: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=100,
            help="tries of a task that meets network faults (fresh sandbox) \\[default: 2]",
        ),
    ] = None,
    progress: ProgressOpt = "auto",
    sandbox_url: Annotated[
        list[str] | None,
        typer.Option(
            help="sandbox server (default: embedded); with --backend ray, repeat it: "
            "actor i uses URL i mod n"
        ),
    ] = None,
    sandbox_token: Annotated[
        str | None,
        typer.Option(
            envvar="AGENTFLEET_SANDBOX_TOKEN",
            help="bearer token of the --sandbox-url servers (embedded ones make their own)",
        ),
    ] = None,
    backend: Annotated[str, typer.Option(help="local | ray")] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="with --backend ray: auto | ray://HOST:PORT (default: start a local Ray)"
        ),
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_WORKERS,
            help="with --backend ray: actors the tasks are split over \\[default: 2]",
        ),
    ] = None,
    ray_eval: Annotated[
        str | None,
        typer.Option(
            help="with --backend ray: where embedded evaluations run: actors (one evaluation "
            "server in the driver, its jobs timed by Ray actors, one per CPU of the cluster, "
            "each pinned to it) | shards (a server with local workers in each shard) "
            "\\[default: actors; shards for image tasks]"
        ),
    ] = None,
    eval_url: Annotated[
        str | None, typer.Option(help="evaluation server (default: embedded)")
    ] = None,
    step_limit: Annotated[
        int | None,
        typer.Option(min=1, max=1_000_000, help="model calls per agent \\[default: 30]"),
    ] = None,
    time_limit: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            max=MAX_TTL_S,  # no agent outlives the longest sandbox
            help="seconds per agent \\[default: 900]",
        ),
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option(
            help="light (LightAgent) | mini (mini-swe-agent's DefaultAgent) \\[default: light]"
        ),
    ] = None,
    agent_config: Annotated[
        Path | None,
        typer.Option(
            help="YAML with limits (step_limit, time_limit_s, cost_limit, run_cost_limit...) "
            "and templates; flags override it. --agent mini: a mini-swe-agent config"
        ),
    ] = None,
    cost_limit: Annotated[
        float | None,
        typer.Option(
            min=0.0, help="USD per agent; reaching it ends the agent with CostLimitExceeded"
        ),
    ] = None,
    run_cost_limit: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="USD for the whole run; reaching it ends the agents with RunCostLimitExceeded",
        ),
    ] = None,
    eval_repeats: EvalRepeatsOpt = None,
    eval_reference: Annotated[
        bool | None,
        typer.Option(
            "--eval-reference/--no-eval-reference",
            help="embedded evaluations also time each task's reference solution "
            "(info.reference_speedup, plotted by `report`) \\[default: no]",
        ),
    ] = None,
    eval_early_stop: Annotated[
        bool | None,
        typer.Option(
            "--eval-early-stop/--no-eval-early-stop",
            help="embedded evaluations stop their timed rounds before --eval-repeats once "
            "more rounds cannot change the reward (the speedup figure then rests on fewer "
            "rounds) \\[default: yes]",
        ),
    ] = None,
    sandbox_root: SandboxRootOpt = None,
    sandbox_backend: SandboxBackendOpt = None,
    image_map: ImageMapOpt = None,
    registry_prefix: RegistryPrefixOpt = None,
    pull: PullOpt = None,
    pool: Annotated[
        str | None,
        typer.Option(
            help="HTTP pool: small|medium|large, or LIMIT/PER_HOST such as 300/150 "
            "(default: by fleet size)"
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run a fleet of agents on a dataset split and print their scores."""
    from agentfleet.evaluation.ray_workers import RayRoomError  # (Ray itself not imported)
    from agentfleet.fleet import run as fleet_run
    from agentfleet.fleet.dashboard import choose_mode, make_progress
    from agentfleet.fleet.monitor import FleetMonitor
    from agentfleet.fleet.report import print_results
    from agentfleet.fleet.rundir import RunDir
    from agentfleet.fleet.runner import plan_run
    from agentfleet.fleet.servers import ServerUnreachable
    from agentfleet.serving import exit_code

    try:
        mode = choose_mode(progress)
        setup_run_logging(verbose, rich=mode == "rich")
        request = fleet_run.RunRequest(
            dataset=dataset,
            split=split,
            model=model,
            model_url=model_url,
            model_delay=model_delay,
            workers=workers,
            tasks=task,
            eval_repeats=eval_repeats,
            eval_reference=eval_reference,
            eval_early_stop=eval_early_stop,
            step_limit=step_limit,
            time_limit=time_limit,
            cost_limit=cost_limit,
            run_cost_limit=run_cost_limit,
            agent=agent,
            agent_config=agent_config,
            run_dir=run_dir,
            resume=resume,
            rerun_failed=rerun_failed,
            task_attempts=task_attempts,
            sandbox_urls=sandbox_url or [],
            sandbox_token=sandbox_token,
            eval_url=eval_url,
            sandbox_root=sandbox_root,
            pool=pool,
            backend=backend,
            ray_address=ray_address,
            shards=shards,
            ray_eval=ray_eval,
            sandbox_backend=sandbox_backend,
            image_map=image_map,
            registry_prefix=registry_prefix,
            pull=pull,
        )
        cfg, ray = fleet_run.build_config(request)
        plan = plan_run(cfg)
    except (ValueError, LookupError, OSError) as exc:
        fail(str(exc))
    if plan.resumed is not None:
        again = "run again" if rerun_failed else "kept; --rerun-failed runs them again"
        _note(
            f"resuming {cfg.run_dir}: {len(plan.resumed.done)} done, "
            f"{len(plan.resumed.failed)} failed ({again}), {len(plan.tasks)} to run"
        )
    _note(
        f"running {len(plan.tasks)} tasks of {cfg.dataset}/{cfg.split} with {cfg.model.spec}, "
        f"{cfg.workers} at once -> {cfg.run_dir}"
    )
    monitor = FleetMonitor()
    title = f"agentfleet run {cfg.run_dir.name} ({cfg.model.spec})"
    ctx, listener = make_progress(mode, monitor, err, title=title)
    try:
        with ctx if ctx is not None else nullcontext():
            result = fleet_run.run(cfg, ray=ray, plan=plan, listener=listener, monitor=monitor)
    except KeyboardInterrupt as exc:  # SIGINT (exit 130) or SIGTERM (exit 143)
        code = exit_code(exc)
        err.print(
            f"[yellow]interrupted{' by SIGTERM' if code == 143 else ''}: sandboxes deleted, "
            f"partial results in {RunDir(cfg.run_dir).results} (continue with: agentfleet "
            f"run --resume {cfg.run_dir})[/yellow]",
            soft_wrap=True,
        )
        raise typer.Exit(code) from None
    except (RayRoomError, ServerUnreachable) as exc:  # no CPU for Ray's evaluation actors;
        fail(str(exc))  # a --eval-url nothing answers at
    print_results(result.outcomes, result.summary, console)
    console.print(f"run folder: {cfg.run_dir}")
    if monitor.failed:
        err.print(
            f"[red]{monitor.failed} task(s) failed[/red]: agentfleet run --resume "
            f"{cfg.run_dir} --rerun-failed runs them again",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"details: agentfleet show {cfg.run_dir} [ID] · agentfleet report {cfg.run_dir}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if monitor.failed:  # some task has no trustworthy score: scripts must see it
        raise typer.Exit(1)


def _note(message: str) -> None:
    err.print(message, highlight=False, soft_wrap=True)


def setup_run_logging(verbose: bool, *, rich: bool) -> None:
    """Like :func:`~agentfleet._cli.setup_logging`; with the live dashboard, log records are printed
    through its console so they scroll above it instead of tearing it."""
    if not rich:
        setup_logging(verbose)
        return
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=err, show_path=False, rich_tracebacks=False)],
        force=True,
    )
