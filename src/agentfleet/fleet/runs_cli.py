"""``agentfleet show`` and ``agentfleet report``: a run folder read back, in the terminal
or as one HTML file. Top-level commands: the main command registers these functions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from agentfleet._cli import console, fail

RunDirArg = Annotated[
    Path, typer.Argument(help="run folder (runs/<name>)", exists=True, file_okay=False)
]


def show(
    run_dir: RunDirArg,
    instance: Annotated[str | None, typer.Argument(help="task id: print its trajectory")] = None,
    full: Annotated[bool, typer.Option(help="do not clip long messages")] = False,
) -> None:
    """A run's results table, or with a task id its trajectory, readably in the terminal."""
    from agentfleet.fleet.results import read_trajectory
    from agentfleet.fleet.rundir import RunDir
    from agentfleet.fleet.show import print_trajectory, results_table
    from agentfleet.tasks.oneline import not_utf8

    files = RunDir(run_dir)
    if not files.is_run():
        fail(f"{run_dir} is not a run folder (no {files.results.name} or {files.config.name})")
    if instance is None:
        console.print(results_table(run_dir))
        for line in _benchmark_lines(run_dir):  # real benchmarks: each one's own rule
            console.print(line, highlight=False)
        return
    try:
        traj = read_trajectory(run_dir, instance)
    except FileNotFoundError as exc:
        fail(f"{exc} (have: {', '.join(files.trajectory_ids()) or 'none'})")
    except UnicodeDecodeError as exc:
        fail(f"{files.trajectory(instance)}: {not_utf8(exc)}")
    except json.JSONDecodeError as exc:
        fail(f"{files.trajectory(instance)}: not JSON: {exc}")
    except (ValueError, OSError) as exc:  # its own message names the file
        fail(str(exc))
    print_trajectory(traj, console, full=full)


def report_cmd(
    run_dir: RunDirArg,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="HTML file (default RUN_DIR/report.html)"),
    ] = None,
) -> None:
    """Write one self-contained HTML report of a run: summary, plots, tasks, trajectories."""
    from agentfleet.fleet.html_report import write_report
    from agentfleet.fleet.rundir import RunDir

    results = RunDir(run_dir).results
    if not results.exists():
        fail(f"{run_dir} has no {results.name}: nothing to report")
    if output is not None and output.is_dir():  # before the report is built
        fail(f"--output {output}: is a folder; give the HTML file's path")
    try:
        path = write_report(run_dir, output)
    except OSError as exc:  # a bad output path, as bad input (README: exit 2)
        where = exc.filename or output or RunDir(run_dir).report
        fail(f"cannot write the report to {where}: {exc.strerror or exc}")
    console.print(f"report: {path}", highlight=False)


def _benchmark_lines(run_dir: Path) -> list[str]:
    from agentfleet.evaluation.pass_rules import benchmark_summary
    from agentfleet.fleet.report import benchmark_lines
    from agentfleet.fleet.results import latest_results

    infos = [r.get("info") or {} for r in latest_results(run_dir).values()]
    return benchmark_lines(benchmark_summary(infos))
