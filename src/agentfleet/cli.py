"""The ``agentfleet`` command: ``run``, ``show``, ``report`` and the servers here; the
sub-apps beside their packages (``tasks``, ``eval``, ``bench``, ``images``, ``sandbox``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# Underscored aliases: the names the commands below were written with.
from agentfleet._cli import (
    ConfineOpt,
    DatasetOpt,
    DatasetRootOpt,
    VerboseOpt,
    check_folder as _check_folder,
    exit_stopped as _exit_stopped,
    fail as _fail,
    setup_logging as _setup_logging,
)
from agentfleet.evaluation.serve_cli import serve_eval
from agentfleet.fleet.run_cli import run
from agentfleet.fleet.runs_cli import report_cmd, show
from agentfleet.sandbox.base import (
    DEFAULT_MAX_EXECS,
    DEFAULT_MAX_EXECS_PER_SANDBOX,
    DEFAULT_MAX_SANDBOXES,
    DEFAULT_REAP_INTERVAL_S,
    DEFAULT_STOP_GRACE_S,
    DEFAULT_TTL_S,
)
from agentfleet.tasks import DEFAULT_DATASET, TaskNotFound, dataset_roots

app = typer.Typer(
    help="Run fleets of coding agents on performance tasks and score them.",
    no_args_is_help=True,
    add_completion=False,
)


def _mount_subcommands() -> None:
    """Sub-apps that live beside their packages."""
    from agentfleet.bench.cli import bench_app
    from agentfleet.evaluation.cli import eval_app
    from agentfleet.fleet.preds_cli import eval_preds
    from agentfleet.fleet.tasks_cli import tasks_app
    from agentfleet.sandbox.cli import images_app, sandbox_app

    # `eval preds` runs a fleet (a layer above evaluation/): mounted here, beside the run
    eval_app.command("preds")(eval_preds)
    app.add_typer(tasks_app, name="tasks")
    app.add_typer(eval_app, name="eval")
    app.add_typer(bench_app, name="bench")
    app.add_typer(images_app, name="images")
    app.add_typer(sandbox_app, name="sandbox")


_mount_subcommands()


# eval-worker: a remote evaluation worker (evaluation/worker_cli.py) --------------------
def _mount_eval_worker() -> None:
    from agentfleet.evaluation.worker_cli import eval_worker

    app.command("eval-worker")(eval_worker)


_mount_eval_worker()


# run: its options and output live beside the run (fleet/run_cli.py) ------------------
app.command()(run)
# serve-eval: beside the evaluation server (evaluation/serve_cli.py)
app.command("serve-eval")(serve_eval)


# show / report: commands that read a run folder back (fleet/runs_cli.py) -------------
app.command()(show)
app.command("report")(report_cmd)


# servers -----------------------------------------------------------------------------
def _check_root(root: Path) -> None:
    """``serve-sandbox --root``: a folder (made at start-up if missing), not a file."""
    if root.exists() and not root.is_dir():
        _fail(f"--root {str(root)!r}: not a folder")
    _check_folder("--root", root, root)


@app.command("serve-sandbox")
def serve_sandbox(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port (0: any free one)")] = 9527,
    backend: Annotated[str, typer.Option(help="process | docker")] = "process",
    root: Annotated[
        Path | None,
        typer.Option(help="host folder of the sandboxes (default $TMPDIR/agentfleet-sandboxes)"),
    ] = None,
    image: Annotated[
        str | None, typer.Option(help="docker: image (default agentfleet-base:bookworm)")
    ] = None,
    memory: Annotated[
        str | None,
        typer.Option(help="memory per sandbox, e.g. 512m, 2g; 0: none (default 2g)"),
    ] = None,
    cpus: Annotated[
        float | None,
        typer.Option(help="CPUs per sandbox; 0: none (default: docker 1.0, process none)"),
    ] = None,
    pids_limit: Annotated[
        int | None, typer.Option(help="processes per sandbox; 0: none (default 512)")
    ] = None,
    file_size: Annotated[
        str | None,
        typer.Option(
            help="largest file a command may write, e.g. 1g; 0: none "
            "(default: process 1g, docker none)"
        ),
    ] = None,
    cpu_time: Annotated[
        int | None, typer.Option(help="CPU seconds per process of a command; 0: none (default)")
    ] = None,
    allow_image: Annotated[
        list[str] | None,
        typer.Option(help="docker: an image create requests may name besides --image (repeat)"),
    ] = None,
    image_map: Annotated[
        Path | None,
        typer.Option(help="docker: image tasks' images renamed, JSON/YAML id (or image) -> image"),
    ] = None,
    registry_prefix: Annotated[
        str | None, typer.Option(help="docker: put before image tasks' image names")
    ] = None,
    pull: Annotated[
        str | None,
        typer.Option(help="docker: pull image tasks' images never | missing | always (missing)"),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="AGENTFLEET_SANDBOX_TOKEN",
            help="bearer token required from clients (needed beyond loopback)",
        ),
    ] = None,
    max_sandboxes: Annotated[
        int, typer.Option(help="sandboxes alive at once; more answer 429")
    ] = DEFAULT_MAX_SANDBOXES,
    max_execs: Annotated[
        int, typer.Option(help="commands running at once, in all; more answer 429")
    ] = DEFAULT_MAX_EXECS,
    max_execs_per_sandbox: Annotated[
        int, typer.Option(help="commands running at once in one sandbox; more answer 429")
    ] = DEFAULT_MAX_EXECS_PER_SANDBOX,
    ttl: Annotated[
        float, typer.Option(help="seconds a sandbox lives when its create request names no ttl")
    ] = DEFAULT_TTL_S,
    reap_interval: Annotated[
        float, typer.Option(help="seconds between deletions of expired sandboxes (0: never)")
    ] = DEFAULT_REAP_INTERVAL_S,
    stop_grace: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=3600.0,
            help="on SIGINT / SIGTERM: seconds running commands get to finish; then they "
            "are killed and answer 503",
        ),
    ] = DEFAULT_STOP_GRACE_S,
    dataset_root: DatasetRootOpt = None,
    confine: ConfineOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Serve sandboxes over HTTP (default port 9527); backend process or docker."""
    from agentfleet.sandbox.cli import serve_settings
    from agentfleet.sandbox.server import run_server

    try:
        backend_kw, service_kw = serve_settings(
            backend,
            image=image,
            memory=memory,
            cpus=cpus,
            pids_limit=pids_limit,
            file_size=file_size,
            cpu_time=cpu_time,
            allow_images=allow_image or [],
            image_map=image_map,
            registry_prefix=registry_prefix,
            pull=pull,
            max_sandboxes=max_sandboxes,
            max_execs=max_execs,
            max_execs_per_sandbox=max_execs_per_sandbox,
            ttl=ttl,
            reap_interval=reap_interval,
            confine=confine,
            host=host,
        )
        service_kw["dataset_roots"] = dataset_roots(dataset_root or ())
    except ValueError as e:
        _fail(str(e))
        return
    if root is not None:
        _check_root(root)
    _setup_logging(verbose)
    try:
        stopped_by = run_server(
            host=host,
            port=port,
            backend=backend,
            root=root,
            backend_kw=backend_kw,
            token=token,
            stop_grace_s=stop_grace,
            **service_kw,
        )
    except ValueError as exc:  # e.g. a public host without a token
        _fail(str(exc))
    _exit_stopped(stopped_by)


@app.command("mock-llm")
def mock_llm(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port (0: any free one)")] = 8000,
    dataset: DatasetOpt = DEFAULT_DATASET,
    latency: Annotated[float, typer.Option(help="seconds per reply (or the low end)")] = 0.0,
    latency_max: Annotated[
        float | None, typer.Option(help="high end: latency drawn in \\[latency, latency-max]")
    ] = None,
    latency_dist: Annotated[str | None, typer.Option(help="fixed | uniform | exponential")] = None,
    error_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="share of failed calls")
    ] = 0.0,
    error_kinds: Annotated[str, typer.Option(help="comma list of 429,500,drop")] = "429,500,drop",
    malformed_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="tool-call mode: share of malformed calls")
    ] = 0.0,
    retry_after: Annotated[float, typer.Option(help="Retry-After of injected 429s")] = 0.0,
    cost_per_call: Annotated[
        float | None, typer.Option(help="usage.cost reported per call")
    ] = None,
    require_key: Annotated[str | None, typer.Option(help="answer 401 unless this API key")] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="seed of the random latencies, errors and malformed calls (repeatable runs)"
        ),
    ] = None,
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
            malformed_rate=malformed_rate,
            retry_after=retry_after,
            cost_per_call=cost_per_call,
            require_key=require_key,
            seed=seed,
        )
    except (ValueError, TaskNotFound) as exc:
        _fail(str(exc))


def main() -> None:  # pragma: no cover
    app()
