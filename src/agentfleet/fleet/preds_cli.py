"""``agentfleet eval preds PREDS.json``: evaluate predictions made by any agent, writing
the run folder ``agentfleet run`` writes (the main command mounts it on ``eval``)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from agentfleet._cli import (
    MAX_WORKERS,
    DatasetOpt,
    ImageMapOpt,
    PullOpt,
    RegistryPrefixOpt,
    SandboxBackendOpt,
    SandboxRootOpt,
    SplitOpt,
    VerboseOpt,
    check_url,
    console,
    err,
    fail,
)
from agentfleet.fleet.run_cli import EvalRepeatsOpt, ProgressOpt, RunDirOpt, setup_run_logging
from agentfleet.tasks.defaults import DEFAULT_DATASET, DEFAULT_SPLIT

__all__ = ["eval_preds"]


def eval_preds(
    ctx: typer.Context,
    preds: Annotated[
        Path,
        typer.Argument(
            help="preds.json ({id: {instance_id, model_name_or_path, model_patch}}), "
            "a JSON list or a .jsonl of such records",
            exists=True,
            dir_okay=False,
        ),
    ],
    dataset: DatasetOpt = DEFAULT_DATASET,
    split: SplitOpt = DEFAULT_SPLIT,
    workers: Annotated[
        int, typer.Option("--workers", "-w", min=1, max=MAX_WORKERS, help="at once")
    ] = 4,
    run_dir: RunDirOpt = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="continue the eval preds run in RUN_DIR: the same predictions (PREDS.json "
            "given again), those without a result evaluated; its dataset, split, "
            "--eval-repeats and image options are kept",
            metavar="RUN_DIR",
        ),
    ] = None,
    rerun_failed: Annotated[
        bool,
        typer.Option(help="with --resume: evaluate again the predictions whose evaluation failed"),
    ] = False,
    eval_repeats: EvalRepeatsOpt = None,
    progress: ProgressOpt = "auto",
    eval_url: Annotated[
        str | None, typer.Option(help="evaluation server (default: embedded)")
    ] = None,
    sandbox_url: Annotated[
        str | None, typer.Option(help="sandbox server (default: embedded)")
    ] = None,
    sandbox_token: Annotated[
        str | None,
        typer.Option(envvar="AGENTFLEET_SANDBOX_TOKEN", help="bearer token of --sandbox-url"),
    ] = None,
    sandbox_root: SandboxRootOpt = None,
    sandbox_backend: SandboxBackendOpt = None,
    image_map: ImageMapOpt = None,
    registry_prefix: RegistryPrefixOpt = None,
    pull: PullOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Evaluate predictions (any agent's patches) on a dataset: results.jsonl, summary.json,
    preds.json as a run writes them; `agentfleet report RUN_DIR` for the HTML report."""
    from agentfleet.fleet.config import FleetConfig, select_tasks
    from agentfleet.fleet.dashboard import choose_mode, make_progress
    from agentfleet.fleet.image_options import image_options
    from agentfleet.fleet.monitor import FleetMonitor
    from agentfleet.fleet.preds import PredictionsSpec, check_resumable, load_predictions
    from agentfleet.fleet.report import print_results
    from agentfleet.fleet.run import run
    from agentfleet.fleet.rundir import RunDir, chosen_run, run_name
    from agentfleet.fleet.runner import plan_run
    from agentfleet.fleet.servers import ServerUnreachable
    from agentfleet.serving import exit_code
    from agentfleet.tasks.oneline import not_utf8

    check_url("--sandbox-url", sandbox_url)  # as `run` does: a wrong URL fails every task
    check_url("--eval-url", eval_url)
    try:
        mode = choose_mode(progress)
        run_dir, saved = chosen_run(run_dir, resume, rerun_failed)
    except ValueError as exc:
        fail(str(exc))
    setup_run_logging(verbose, rich=mode == "rich")
    try:
        predictions = load_predictions(preds)
    except UnicodeDecodeError as exc:  # load_predictions' own errors name the file
        fail(f"{preds}: {not_utf8(exc)}")
    except (ValueError, OSError) as exc:
        fail(str(exc))
    if resume is not None:
        try:
            check_resumable(resume, saved, predictions)
        except ValueError as exc:
            fail(str(exc))
        dataset = _kept(ctx, "dataset", dataset, saved, resume)
        split = _kept(ctx, "split", split, saved, resume)
        if eval_repeats is None and isinstance(saved.get("eval_repeats"), int):
            eval_repeats = saved["eval_repeats"]
    try:
        models = sorted({p.model for p in predictions.values() if p.model})
        model = models[0] if len(models) == 1 else ("mixed" if models else "")
        spec = PredictionsSpec(model)
        asked = _Asked(sandbox_backend, [sandbox_url] if sandbox_url else [], image_map,
                       registry_prefix, pull)  # fmt: skip
        cfg = FleetConfig(
            model=spec,
            run_dir=run_dir or Path("runs") / run_name(dataset, split, spec.spec),
            dataset=dataset,
            split=split,
            task_ids=list(predictions),
            workers=workers,
            sandbox_url=sandbox_url,
            sandbox_token=sandbox_token,
            eval_url=eval_url,
            eval_repeats=eval_repeats,
            sandbox_root=sandbox_root,
            predictions=dict(predictions),
            resume=resume is not None,
            rerun_failed=rerun_failed,
        )
        if resume is not None:
            cfg.run_task_ids = list(predictions)
        for key, value in image_options(asked, select_tasks(cfg), saved).items():
            setattr(cfg, key, value)
        plan = plan_run(cfg)
    except (ValueError, LookupError, OSError) as exc:
        fail(str(exc))
    if plan.resumed is not None:
        again = "evaluated again" if rerun_failed else "kept; --rerun-failed evaluates them again"
        console.print(
            f"resuming {cfg.run_dir}: {len(plan.resumed.done)} done, "
            f"{len(plan.resumed.failed)} failed ({again})",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"evaluating {len(plan.tasks)} predictions on {dataset}/{split} -> {cfg.run_dir}",
        highlight=False,
        soft_wrap=True,
    )
    monitor = FleetMonitor()
    live, listener = make_progress(mode, monitor, err, title=f"agentfleet eval preds {preds.name}")
    try:
        with live if live is not None else nullcontext():
            result = run(cfg, plan=plan, listener=listener, monitor=monitor)
    except KeyboardInterrupt as exc:  # SIGINT (exit 130) or SIGTERM (exit 143)
        err.print(
            f"interrupted: sandboxes deleted, partial results in {RunDir(cfg.run_dir).results} "
            f"(continue with: agentfleet eval preds {preds} --resume {cfg.run_dir})",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(exit_code(exc)) from None
    except ServerUnreachable as exc:
        fail(str(exc))
    print_results(result.outcomes, result.summary, console)
    console.print(f"run folder: {cfg.run_dir}", highlight=False)


def _kept(ctx: typer.Context, name: str, given: str, saved: dict[str, Any], run: Path) -> str:
    """A resumed run's ``name`` (dataset, split): the saved one unless given on the command
    line, where it must be the same."""
    from click.core import ParameterSource

    was = saved.get(name)
    if not isinstance(was, str):
        return given
    if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT and given != was:
        fail(f"--{name} {given!r}: the run in {run} evaluated {name} {was!r}")
    return was


@dataclass
class _Asked:
    """The image options asked (what ``image_options`` reads of a run's request)."""

    sandbox_backend: str | None
    sandbox_urls: list[str]
    image_map: Path | None
    registry_prefix: str | None
    pull: str | None
    backend: str = "local"
