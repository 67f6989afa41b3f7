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
    from pydantic import ValidationError

    from agentfleet.evaluation.client import EvalClient
    from agentfleet.evaluation.schema import EvalRequest
    from agentfleet.tasks.oneline import one_line

    url = _checked_url(url)
    try:
        req = EvalRequest(
            exit_status="Submitted",
            result=_read_patch(patch),
            instance_id=instance,
            dataset_name=dataset,
            split=split,
            idempotency_key=key,
        )
    except ValidationError as exc:
        fail(one_line(exc, _OPTIONS, limit=1))

    async def go() -> Any:
        client = EvalClient(url, outage_s=0)  # a command: say at once that it is down
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

    url = _checked_url(url)

    async def go() -> Any:
        return await EvalClient(url, outage_s=0).status(job_id, wait=wait)

    _print_json(_call(go))


# ``eval submit``'s fields as its options name them in its errors (EvalRequest's limits)
_OPTIONS = {"instance_id": "--instance", "dataset_name": "--dataset", "split": "--split",
            "idempotency_key": "--key"}  # fmt: skip


def _checked_url(url: str) -> str:
    """``--url``, or exit 2 unless it is an http(s) URL with a host and a valid port."""
    from agentfleet.http.urls import is_http_url

    if not is_http_url(url):
        fail(f"--url must be an http(s) URL such as {DEFAULT_EVAL_URL}, not {url[:200]!r}")
    return url


def _read_patch(patch: Path) -> str:
    """The patch's text, or exit 2 naming the file (too large for a request, not UTF-8)."""
    from agentfleet.evaluation.schema import MAX_PATCH_CHARS
    from agentfleet.tasks.oneline import not_utf8

    too_large = f"{patch}: larger than a request takes ({MAX_PATCH_CHARS} characters)"
    try:
        if patch.stat().st_size > 4 * MAX_PATCH_CHARS:  # not read: 4 bytes a character at most
            fail(too_large)
        text = patch.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        fail(f"{patch}: {not_utf8(exc)}; a patch is a git diff")
    except OSError as exc:
        fail(f"{patch}: cannot read: {exc.strerror or exc}")
    if len(text) > MAX_PATCH_CHARS:
        fail(too_large)
    return text


def _call(fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``fn()``. The server refusing the request (a 4xx: an unknown task, dataset,
    split or job, a bad token) exits 2; no answer (transport, 5xx, timeout) exits 1."""
    from agentfleet.evaluation.client import EvalRejected
    from agentfleet.http import HttpError

    try:
        return asyncio.run(fn())
    except EvalRejected as exc:
        fail(str(exc), 2)
    except HttpError as exc:
        fail(str(exc), 1)


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))
