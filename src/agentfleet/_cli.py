"""What the ``agentfleet`` command's modules share: the consoles, the error exit, logging
setup and the dataset options. Each sub-app (``cli.py``, ``evaluation/cli.py``,
``fleet/tasks_cli.py``) imports it, so it sits at the bottom of the layers."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, NoReturn

import typer
from rich.console import Console

__all__ = ["DatasetOpt", "SplitOpt", "console", "err", "fail", "setup_logging"]

console = Console()
err = Console(stderr=True)

DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="bundled name or folder path")]
SplitOpt = Annotated[str, typer.Option("--split", "-s", help="split of the dataset")]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: bad usage)."""
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
