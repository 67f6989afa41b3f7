"""``agentfleet eval-worker``: a remote evaluation worker on this machine (mounted by the
main command). It leases jobs from an evaluation server and runs them in its own
sandboxes, on its own CPUs; SIGINT / SIGTERM stop it (the running evaluation is
cancelled and its lease handed back: the job is queued again at once)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from agentfleet._cli import MAX_TEST_LATENCY_S, VerboseOpt, check_url, fail, setup_logging
from agentfleet.evaluation.schema import MAX_LEASE_WAIT_S

log = logging.getLogger("agentfleet.evaluation.worker")


def eval_worker(
    server: Annotated[
        str, typer.Option(envvar="AGENTFLEET_EVAL_URL", help="evaluation server URL")
    ],
    token: Annotated[
        str | None,
        typer.Option(envvar="AGENTFLEET_EVAL_TOKEN", help="the evaluation server's token"),
    ] = None,
    cpus: Annotated[
        str | None,
        typer.Option(help="pin every command to these CPUs (taskset syntax: 0-3,6)"),
    ] = None,
    name: Annotated[str | None, typer.Option(help="worker name (default host:pid/cpus)")] = None,
    sandbox_url: Annotated[
        str | None, typer.Option(help="sandbox server (default: in-process sandboxes)")
    ] = None,
    sandbox_token: Annotated[
        str | None,
        typer.Option(envvar="AGENTFLEET_SANDBOX_TOKEN", help="bearer token of --sandbox-url"),
    ] = None,
    dataset_root: Annotated[
        list[Path] | None,
        typer.Option("--dataset-root", help="folder of datasets (repeatable), as serve-eval's"),
    ] = None,
    confine: Annotated[
        str | None,
        typer.Option(
            help="in-process sandboxes: required | auto | off (bubblewrap); default required "
            "unless --server is on loopback"
        ),
    ] = None,
    max_jobs: Annotated[
        int | None, typer.Option(min=1, help="exit after this many jobs (default: never)")
    ] = None,
    wait: Annotated[
        float, typer.Option(min=1.0, max=MAX_LEASE_WAIT_S, help="long poll for a job, seconds")
    ] = 20.0,
    test_latency: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=MAX_TEST_LATENCY_S,
            help="test mode: every evaluation sleeps this long, reward 1",
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Evaluate jobs of an evaluation server on this machine (see docs/evaluation.md)."""
    from agentfleet.evaluation.pinning import available_cpus, format_cpus, parse_cpus
    from agentfleet.evaluation.worker import WorkerEvaluators, serve_worker
    from agentfleet.sandbox.cli import confine_setting
    from agentfleet.serving import Stopped, run_async
    from agentfleet.tasks import dataset_roots

    check_url("--server", server)
    check_url("--sandbox-url", sandbox_url)
    try:
        confine = confine_setting(confine, urlsplit(server).hostname or "")
        pinned = parse_cpus(cpus) if cpus else None
        if pinned and not set(pinned) <= set(have := available_cpus()):
            raise ValueError(f"--cpus {cpus}: this process may use CPUs {format_cpus(have)} only")
        roots = dataset_roots(dataset_root or ())
    except ValueError as exc:
        fail(str(exc))
    setup_logging(verbose)
    evaluators = WorkerEvaluators(
        sandbox_url=sandbox_url,
        sandbox_token=sandbox_token,
        dataset_roots=roots,
        confine=confine,
        test_latency=test_latency,
    )
    coro = serve_worker(
        server, evaluators, token=token, name=name, cpus=pinned, max_jobs=max_jobs, wait_s=wait
    )
    try:
        ran = run_async(coro)
    except Stopped as exc:
        raise typer.Exit(exc.exit_code) from None
    except asyncio.CancelledError:  # pragma: no cover - cancelled from outside
        raise typer.Exit(1) from None
    log.info("eval-worker: %d job(s) run", ran)


__all__ = ["eval_worker"]
