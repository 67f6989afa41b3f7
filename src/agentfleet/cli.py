"""The ``agentfleet`` command."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from agentfleet.tasks import TaskNotFound, load_dataset

app = typer.Typer(
    help="Run fleets of coding agents on performance tasks and score them.",
    no_args_is_help=True,
    add_completion=False,
)
tasks_app = typer.Typer(help="List, show and check tasks of a dataset.", no_args_is_help=True)
eval_app = typer.Typer(help="Submit to and query an evaluation server.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
app.add_typer(eval_app, name="eval")

console = Console()
err = Console(stderr=True)

DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="bundled name or folder path")]
SplitOpt = Annotated[str, typer.Option("--split", "-s", help="split of the dataset")]


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# run ---------------------------------------------------------------------------------
@app.command()
def run(
    dataset: DatasetOpt = "perf-lite",
    split: SplitOpt = "test",
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="oracle | scripted:FILE | openai/NAME | openrouter/NAME"
        ),
    ] = "oracle",
    model_url: Annotated[
        str | None, typer.Option(help="base URL of an OpenAI-compatible API")
    ] = None,
    model_delay: Annotated[float, typer.Option(help="seconds added per offline model reply")] = 0.0,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="agents at once")] = 8,
    task: Annotated[
        list[str] | None, typer.Option("--task", "-t", help="only these task ids")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option(help="run folder (default runs/<name>)")] = None,
    sandbox_url: Annotated[
        str | None, typer.Option(help="sandbox server (default: embedded)")
    ] = None,
    eval_url: Annotated[
        str | None, typer.Option(help="evaluation server (default: embedded)")
    ] = None,
    step_limit: Annotated[int, typer.Option(min=1, help="model calls per agent")] = 30,
    time_limit: Annotated[float, typer.Option(help="seconds per agent")] = 900.0,
    agent_config: Annotated[
        Path | None, typer.Option(help="YAML with limits and templates")
    ] = None,
    eval_repeats: Annotated[
        int, typer.Option(min=1, help="timed runs per side in embedded evaluations")
    ] = 5,
    sandbox_root: Annotated[
        Path | None, typer.Option(help="folder of the embedded process sandboxes")
    ] = None,
    pool: Annotated[
        str | None,
        typer.Option(help="HTTP pool preset small|medium|large (default: by fleet size)"),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a fleet of agents on a dataset split and print their scores."""
    from agentfleet.agent import AgentConfig
    from agentfleet.fleet.report import print_results, summary
    from agentfleet.fleet.runner import FleetConfig, run_fleet
    from agentfleet.http import HttpPool, preset_for_fleet
    from agentfleet.models import ModelSpec

    _setup_logging(verbose)
    spec = ModelSpec(model, url=model_url, delay_s=model_delay)
    try:
        spec.prepare()
        tasks = load_dataset(dataset).task_ids(split)
        agent_cfg = AgentConfig.from_yaml(
            agent_config, step_limit=step_limit, time_limit_s=time_limit
        )
    except (ValueError, TaskNotFound, OSError) as exc:
        _fail(str(exc))
    name = (
        f"{Path(dataset).name}-{split}-{model.replace('/', '_').replace(':', '_')}-"
        f"{datetime.now():%Y%m%d-%H%M%S}"
    )
    cfg = FleetConfig(
        model=spec,
        run_dir=run_dir or Path("runs") / name,
        dataset=dataset,
        split=split,
        task_ids=task,
        workers=workers,
        agent=agent_cfg,
        sandbox_url=sandbox_url,
        eval_url=eval_url,
        eval_repeats=eval_repeats,
        sandbox_root=sandbox_root,
    )
    HttpPool.configure_default(pool or preset_for_fleet(workers))
    n = len(task or tasks)
    done = 0

    def listener(event: str, t: Any, outcome: Any) -> None:
        nonlocal done
        if event == "done":
            done += 1
            err.print(
                f"[{done}/{n}] {t.id}: {outcome.exit_status} reward={outcome.reward:.3f} "
                f"speedup={outcome.speedup:.2f}x {outcome.duration_s:.1f}s"
                + (f" ({outcome.error})" if outcome.error else ""),
                highlight=False,
            )

    err.print(
        f"running {n} tasks of {dataset}/{split} with {model}, {workers} at once -> {cfg.run_dir}"
    )
    start = time.monotonic()
    try:
        outcomes = asyncio.run(run_fleet(cfg, listener))
    except KeyboardInterrupt:
        err.print(
            "[yellow]interrupted: sandboxes deleted, partial results in "
            f"{cfg.run_dir}/results.jsonl[/yellow]"
        )
        raise typer.Exit(130) from None
    except LookupError as exc:
        _fail(str(exc))
    s = summary(outcomes, time.monotonic() - start)
    (cfg.run_dir / "summary.json").write_text(json.dumps(s, indent=2))
    print_results(outcomes, s, console)
    console.print(f"run folder: {cfg.run_dir}")


# servers -----------------------------------------------------------------------------
@app.command("serve-sandbox")
def serve_sandbox(
    host: str = "127.0.0.1",
    port: int = 9527,
    backend: Annotated[str, typer.Option(help="process | docker")] = "process",
    root: Annotated[Path | None, typer.Option(help="folder for process sandboxes")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve sandboxes over HTTP (default port 9527)."""
    from agentfleet.sandbox.server import run_server

    _setup_logging(verbose)
    run_server(host=host, port=port, backend=backend, root=root)


@app.command("serve-eval")
def serve_eval(
    host: str = "127.0.0.1",
    port: int = 9528,
    db: Annotated[
        Path | None, typer.Option(help="SQLite file of jobs (default: temporary)")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="evaluations at once")] = None,
    sandbox_url: Annotated[
        str | None, typer.Option(help="sandbox server (default: in-process)")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="AGENTFLEET_EVAL_TOKEN", help="bearer token required from clients"),
    ] = None,
    test_latency: Annotated[
        float | None, typer.Option(help="test mode: every evaluation sleeps this long, reward 1")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve evaluations over HTTP (default port 9528)."""
    from agentfleet.evaluation.server import run_server

    _setup_logging(verbose)
    run_server(
        host=host,
        port=port,
        db_path=db,
        workers=workers,
        token=token,
        test_latency=test_latency,
        sandbox_url=sandbox_url,
    )


@app.command("mock-llm")
def mock_llm(
    host: str = "127.0.0.1",
    port: int = 8000,
    dataset: DatasetOpt = "perf-lite",
    latency: Annotated[float, typer.Option(help="seconds per reply (or the low end)")] = 0.0,
    latency_max: Annotated[
        float | None, typer.Option(help="high end: latency drawn in [latency, latency-max]")
    ] = None,
    latency_dist: Annotated[str | None, typer.Option(help="fixed | uniform | exponential")] = None,
    error_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="share of failed calls")
    ] = 0.0,
    error_kinds: Annotated[str, typer.Option(help="comma list of 429,500,drop")] = "429,500,drop",
    retry_after: Annotated[float, typer.Option(help="Retry-After of injected 429s")] = 0.0,
    cost_per_call: Annotated[
        float | None, typer.Option(help="usage.cost reported per call")
    ] = None,
    require_key: Annotated[str | None, typer.Option(help="answer 401 unless this API key")] = None,
    seed: int | None = None,
) -> None:
    """Serve an OpenAI-compatible mock LLM that answers like the oracle."""
    from agentfleet.models.mock_server import run_mock_llm

    lat: float | tuple[float, float] = latency if latency_max is None else (latency, latency_max)
    try:
        run_mock_llm(
            host,
            port,
            dataset=dataset,
            latency=lat,
            latency_dist=latency_dist,
            error_rate=error_rate,
            error_kinds=[k for k in error_kinds.split(",") if k],
            retry_after=retry_after,
            cost_per_call=cost_per_call,
            require_key=require_key,
            seed=seed,
        )
    except (ValueError, TaskNotFound) as exc:
        _fail(str(exc))


# tasks -------------------------------------------------------------------------------
@tasks_app.command("list")
def tasks_list(
    dataset: DatasetOpt = "perf-lite",
    split: Annotated[str | None, typer.Option("--split", "-s")] = None,
) -> None:
    """List the tasks of a dataset (a bundled name such as perf-lite, or a folder)."""
    try:
        ds = load_dataset(dataset)
        ids = ds.task_ids(split)
    except TaskNotFound as exc:
        _fail(str(exc))
    table = Table(title=f"{ds.name} ({', '.join(f'{k}: {len(v)}' for k, v in ds.splits.items())})")
    for col in ("id", "split", "kind", "title"):
        table.add_column(col)
    for tid in ids:
        t = ds.task(tid)
        splits = ",".join(s for s, v in ds.splits.items() if tid in v)
        table.add_row(t.id, splits, t.kind, t.title)
    console.print(table)


@tasks_app.command("show")
def tasks_show(task_id: str, dataset: DatasetOpt = "perf-lite") -> None:
    """Show one task: prompt, commands, files, reference patch size."""
    try:
        t = load_dataset(dataset).task(task_id)
    except TaskNotFound as exc:
        _fail(str(exc))
    console.print(f"[bold]{t.id}[/bold] ({t.kind}) {t.title}")
    console.print(
        f"tests:    {t.test_cmd}\nworkload: {t.workload_cmd}\n"
        f"protected: {', '.join(t.test_files) or '-'}\nfolder:   {t.task_dir}"
    )
    console.print(f"reference patch: {len(t.solution_patch.splitlines())} lines\n")
    console.print(t.prompt, markup=False)


@tasks_app.command("check")
def tasks_check(
    dataset: DatasetOpt = "perf-lite",
    split: Annotated[str | None, typer.Option("--split", "-s")] = None,
    task: Annotated[list[str] | None, typer.Option("--task", "-t")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="timed runs of each side")] = 5,
) -> None:
    """Run each task's tests on the original code and with its reference solution, and
    measure the reference speedup."""
    from agentfleet.fleet.check import check_tasks

    try:
        ds = load_dataset(dataset)
        ids = task or ds.task_ids(split)
        tasks = [ds.task(i) for i in ids]
    except TaskNotFound as exc:
        _fail(str(exc))
    rows = asyncio.run(check_tasks(tasks, repeats=repeats, progress=lambda m: err.print(m)))
    table = Table(title=f"check of {ds.name}")
    for col in ("task", "original tests", "reference", "baseline s", "speedup", "ok"):
        table.add_column(col)
    bad = 0
    for r in rows:
        bad += not r["ok"]
        table.add_row(
            r["task"],
            r["original_tests"],
            r["reference"],
            f"{r['baseline_s']:.3f}",
            f"{r['speedup']:.2f}x",
            "yes" if r["ok"] else "[red]NO[/red]",
        )
    console.print(table)
    if bad:
        raise typer.Exit(1)


# eval client -------------------------------------------------------------------------
EvalUrl = Annotated[
    str, typer.Option("--url", envvar="AGENTFLEET_EVAL_URL", help="evaluation server")
]


@eval_app.command("submit")
def eval_submit(
    instance: Annotated[str, typer.Option("--instance", "-i", help="task id")],
    patch: Annotated[Path, typer.Option(help="patch file (git diff)", exists=True, dir_okay=False)],
    dataset: DatasetOpt = "perf-lite",
    split: SplitOpt = "test",
    url: EvalUrl = "http://127.0.0.1:9528",
    wait: Annotated[bool, typer.Option(help="wait for the result")] = False,
    key: Annotated[str | None, typer.Option(help="idempotency key")] = None,
) -> None:
    """Submit a patch for evaluation; prints the job id (or the result with --wait)."""
    from agentfleet.evaluation.client import EvalClient
    from agentfleet.evaluation.schema import EvalRequest

    req = EvalRequest(
        exit_status="Submitted",
        result=patch.read_text(),
        instance_id=instance,
        dataset_name=dataset,
        split=split,
        idempotency_key=key,
    )

    async def go() -> Any:
        client = EvalClient(url)
        if wait:
            return (await client.evaluate(req)).model_dump()
        return {"job_id": await client.submit(req)}

    _print_json(_call(go))


@eval_app.command("status")
def eval_status(
    job_id: str,
    url: EvalUrl = "http://127.0.0.1:9528",
    wait: Annotated[float, typer.Option(help="long-poll up to this many seconds")] = 0.0,
) -> None:
    """Show an evaluation job's status and result."""
    from agentfleet.evaluation.client import EvalClient

    async def go() -> Any:
        return await EvalClient(url).status(job_id, wait=wait)

    _print_json(_call(go))


def _call(fn: Any) -> Any:
    from agentfleet.http import HttpError

    try:
        return asyncio.run(fn())
    except HttpError as exc:
        _fail(str(exc), 1)


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def main() -> None:  # pragma: no cover
    app()
