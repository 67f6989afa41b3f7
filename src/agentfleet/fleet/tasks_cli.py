"""``agentfleet tasks ...``: list, show and check the tasks of a dataset (a typer sub-app).

It lives in ``fleet/``, not in ``tasks/``, because ``check`` runs tasks the way a fleet
does (:mod:`agentfleet.fleet.check`: sandboxes and the evaluator, layers above ``tasks``).
Mounted by the main command::

    app.add_typer(tasks_app, name="tasks")
"""

from __future__ import annotations

import asyncio
import math
from typing import Annotated

import typer
from rich.table import Table

from agentfleet._cli import DatasetOpt, console, err, fail
from agentfleet.tasks import DEFAULT_DATASET, TaskNotFound, load_dataset
from agentfleet.tasks.defaults import (
    BASELINE_RANGE_S,
    DEFAULT_EVAL_REPEATS,
    MAX_EVAL_REPEATS,
    MIN_REFERENCE_SPEEDUP,
)

tasks_app = typer.Typer(help="List, show and check tasks of a dataset.", no_args_is_help=True)

SplitFilter = Annotated[
    str | None, typer.Option("--split", "-s", help="only this split (default: every split)")
]


@tasks_app.command("list")
def tasks_list(dataset: DatasetOpt = DEFAULT_DATASET, split: SplitFilter = None) -> None:
    """List the tasks of a dataset (a bundled name such as perf-lite, or a folder)."""
    try:
        ds = load_dataset(dataset)
        tasks = {tid: ds.task(tid) for tid in ds.task_ids(split)}
    except TaskNotFound as exc:  # also a dataset's bad file (DatasetFileError)
        fail(str(exc))
    table = Table(title=f"{ds.name} ({', '.join(f'{k}: {len(v)}' for k, v in ds.splits.items())})")
    for col in ("id", "split", "kind", "title"):
        table.add_column(col)
    for tid, t in tasks.items():
        splits = ",".join(s for s, v in ds.splits.items() if tid in v)
        table.add_row(t.id, splits, t.kind, t.title)
    console.print(table)


@tasks_app.command("show")
def tasks_show(task_id: str, dataset: DatasetOpt = DEFAULT_DATASET) -> None:
    """Show one task: prompt, commands, files, reference patch size."""
    try:
        t = load_dataset(dataset).task(task_id)
    except TaskNotFound as exc:
        fail(str(exc))
    console.print(f"[bold]{t.id}[/bold] ({t.kind}) {t.title}")
    console.print(
        f"tests:    {t.test_cmd}\nworkload: {t.workload_cmd}\n"
        f"protected: {', '.join(t.test_files) or '-'}\nfolder:   {t.task_dir}",
        markup=False,
        highlight=False,
    )
    if t.image is not None:
        console.print(
            f"image:    {t.image} (workdir {t.workdir}, benchmark {t.benchmark})\n"
            f"env:      {t.env_activate or '-'}\nrebuild:  {t.rebuild_cmd or '-'}\n"
            f"timing:   {t.workload_parser}",
            markup=False,
            highlight=False,
        )
    console.print(f"reference patch: {len(t.solution_patch.splitlines())} lines\n")
    console.print(t.prompt, markup=False)


@tasks_app.command("check")
def tasks_check(
    dataset: DatasetOpt = DEFAULT_DATASET,
    split: SplitFilter = None,
    task: Annotated[
        list[str] | None,
        typer.Option("--task", "-t", help="only this task (repeat; default: every task)"),
    ] = None,
    repeats: Annotated[
        int, typer.Option(min=1, max=MAX_EVAL_REPEATS, help="timed runs of each side")
    ] = DEFAULT_EVAL_REPEATS,
    min_speedup: Annotated[
        float, typer.Option(min=1.0, help="least speedup a reference solution must give")
    ] = MIN_REFERENCE_SPEEDUP,
    baseline_range: Annotated[
        str, typer.Option(help="MIN,MAX seconds the original workload must take")
    ] = ",".join(map(str, BASELINE_RANGE_S)),
) -> None:
    """Run each task's tests on the original code and with its reference solution, and
    measure the reference speedup the way the evaluation server does. Exit 1 when a task
    fails a check (tests, reference, speedup, baseline time)."""
    from agentfleet.fleet.check import check_tasks

    lo, hi = _baseline_range(baseline_range)
    try:
        ds = load_dataset(dataset)
        ids = task or ds.task_ids(split)
        tasks = [ds.task(i) for i in ids]
    except TaskNotFound as exc:
        fail(str(exc))
    if any(t.is_image_task for t in tasks):
        fail(
            f"{dataset}: its tasks run in their own images and `tasks check` runs the process "
            "backend only; time their gold patches with `agentfleet run --model oracle` "
            "(docs/benchmarks-real.md)"
        )
    split_of = {tid: s for s, members in ds.splits.items() for tid in members}
    rows = asyncio.run(
        check_tasks(
            tasks,
            repeats=repeats,
            split_of=split_of,
            min_speedup=min_speedup,
            baseline_range=(lo, hi),
            progress=lambda m: err.print(m),
        )
    )
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
            f"{r['baseline_s']:.3f} ({r['clock']})" if r["clock"] else f"{r['baseline_s']:.3f}",
            f"{r['speedup']:.2f}x",
            "yes" if r["ok"] else f"[red]NO[/red]: {'; '.join(r['problems'])}",
        )
    console.print(table)
    if bad:
        raise typer.Exit(1)


def _baseline_range(text: str) -> tuple[float, float]:
    """``--baseline-range MIN,MAX``: finite seconds, 0 < MIN < MAX; else exit 2."""
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        fail(f"--baseline-range wants MIN,MAX seconds, got {text!r}")
    if not 0 < lo < hi < math.inf:
        fail(f"--baseline-range {text}: wants finite seconds, 0 < MIN < MAX")
    return lo, hi
