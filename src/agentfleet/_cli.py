"""What the ``agentfleet`` command's modules share: the consoles, the error exit, logging
setup and the dataset options. Each sub-app (``cli.py``, ``evaluation/cli.py``,
``fleet/tasks_cli.py``) imports it, so it sits at the bottom of the layers."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

__all__ = [
    "MAX_TEST_LATENCY_S",
    "MAX_WORKERS",
    "ConfineOpt",
    "DatasetOpt",
    "DatasetRootOpt",
    "ImageMapOpt",
    "PullOpt",
    "RegistryPrefixOpt",
    "SandboxBackendOpt",
    "SandboxRootOpt",
    "SplitOpt",
    "VerboseOpt",
    "check_folder",
    "check_url",
    "console",
    "err",
    "exit_stopped",
    "fail",
    "setup_logging",
]

console = Console()
err = Console(stderr=True)

# Upper bounds of operator options that no request model declares (the others reuse the
# models' own: EvalConfig's repeats, CreateSandbox's limits, a lease's wait).
MAX_WORKERS = 100_000  # agents, evaluations, Ray actors or shards at once: beyond a machine
MAX_TEST_LATENCY_S = 3600.0  # test mode's sleep per evaluation

DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="bundled name or folder path")]
SplitOpt = Annotated[str, typer.Option("--split", "-s", help="split of the dataset")]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="log progress (INFO) on stderr, not only warnings")
]
# the embedded sandbox server and image tasks' options (`run`, `eval preds`)
SandboxRootOpt = Annotated[
    Path | None, typer.Option(help="folder of the embedded process sandboxes")
]
SandboxBackendOpt = Annotated[
    str | None,
    typer.Option(
        help="embedded sandbox server: process | docker \\[default: docker for datasets "
        "whose tasks run in their own images (gso:, swe-perf:, swefficiency:), else process]"
    ),
]
ImageMapOpt = Annotated[
    Path | None,
    typer.Option(help="image tasks: JSON/YAML object, instance id (or image) -> image"),
]
RegistryPrefixOpt = Annotated[
    str | None,
    typer.Option(help="image tasks: put before each image name (a mirror, a registry)"),
]
PullOpt = Annotated[
    str | None,
    typer.Option(help="image tasks: pull images never | missing | always \\[default: missing]"),
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: bad usage). The message
    is shown as is (a ``[...]`` in it, e.g. in a path, is no rich markup)."""
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def check_url(option: str, url: str | None) -> None:
    """A server's URL option (unset: nothing to check) is an http(s) URL with a host and a
    valid port, else exit 2 naming it: a wrong one would fail every task, not the command."""
    from agentfleet.http.urls import url_problem

    if (problem := url_problem(option, url)) is not None:
        fail(problem)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# the servers' options (serve-sandbox here, serve-eval in evaluation/serve_cli.py) -------
ConfineOpt = Annotated[
    str | None,
    typer.Option(
        help="process sandboxes: required | auto | off (bubblewrap); "
        "default required beyond loopback, else auto"
    ),
]
DatasetRootOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--dataset-root",
        help="folder of datasets requests may name (repeatable; bundled ones always load)",
    ),
]


def check_folder(option: str, path: Path, folder: Path) -> None:
    """``folder`` (made with its parents at start-up) is a folder, or can be made: the
    nearest one of it and its parents that exists is a folder this process may write in."""
    import os

    here = folder.absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        fail(f"{option} {str(path)!r}: {str(here)!r} is not a folder")
    if not os.access(here, os.W_OK | os.X_OK):
        fail(f"{option} {str(path)!r}: cannot write in {str(here)!r}")


def exit_stopped(signum: int | None) -> None:
    """After a server's graceful stop: exit 128 + the signal (SIGINT 130, SIGTERM 143)."""
    if signum is not None:
        raise typer.Exit(128 + signum)
