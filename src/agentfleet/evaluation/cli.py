"""``agentfleet eval ...``: submit to and query an evaluation server (a typer sub-app).

Mounted by the main command::

    app.add_typer(eval_app, name="eval")
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from agentfleet._cli import DatasetOpt, SplitOpt, console, fail
from agentfleet.tasks import DEFAULT_DATASET, DEFAULT_SPLIT
from agentfleet.tasks.defaults import DEFAULT_EVAL_PORT

eval_app = typer.Typer(help="Submit to and query an evaluation server.", no_args_is_help=True)

DEFAULT_EVAL_URL = f"http://127.0.0.1:{DEFAULT_EVAL_PORT}"
EvalUrl = Annotated[
    str, typer.Option("--url", envvar="AGENTFLEET_EVAL_URL", help="evaluation server")
]


@eval_app.command("submit")
def eval_submit(
    instance: Annotated[str, typer.Option("--instance", "-i", help="task id")],
    patch: Annotated[Path, typer.Option(help="patch file (git diff)", exists=True, dir_okay=False)],
    dataset: DatasetOpt = DEFAULT_DATASET,
    split: SplitOpt = DEFAULT_SPLIT,
    url: EvalUrl = DEFAULT_EVAL_URL,
    wait: Annotated[bool, typer.Option(help="wait for the result")] = False,
    key: Annotated[str | None, typer.Option(help="idempotency key")] = None,
    timeout: Annotated[
        float,
        typer.Option(
            min=1.0, help="give up after this many seconds (queue full, or waiting with --wait)"
        ),
    ] = 3600.0,
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
            return (await client.evaluate(req, timeout=timeout)).model_dump()
        return {"job_id": await client.submit(req, timeout=timeout)}

    _print_json(_call(go))


@eval_app.command("status")
def eval_status(
    job_id: str,
    url: EvalUrl = DEFAULT_EVAL_URL,
    wait: Annotated[float, typer.Option(help="long-poll up to this many seconds")] = 0.0,
) -> None:
    """Show an evaluation job's status and result."""
    from agentfleet.evaluation.client import EvalClient

    async def go() -> Any:
        return await EvalClient(url).status(job_id, wait=wait)

    _print_json(_call(go))


def _call(fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``fn()``; a server's error answer exits 1 with its message."""
    from agentfleet.http import HttpError

    try:
        return asyncio.run(fn())
    except HttpError as exc:
        fail(str(exc), 1)


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))
