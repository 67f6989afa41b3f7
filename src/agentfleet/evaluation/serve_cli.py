"""``agentfleet serve-eval``: its options, checked before anything starts, and the start of
the evaluation server (:func:`~agentfleet.evaluation.server.run_server`)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

# Underscored aliases: the names the command below was written with.
from agentfleet._cli import (
    MAX_TEST_LATENCY_S,
    MAX_WORKERS,
    ConfineOpt,
    DatasetRootOpt,
    VerboseOpt,
    check_folder as _check_folder,
    check_url as _check_url,
    exit_stopped as _exit_stopped,
    fail as _fail,
    setup_logging as _setup_logging,
)
from agentfleet.tasks import dataset_roots
from agentfleet.tasks.defaults import (
    DEFAULT_EARLY_STOP_ROUNDS,
    DEFAULT_EVAL_PORT,
    DEFAULT_EVAL_REPEATS,
    MAX_EVAL_REPEATS,
)

__all__ = ["serve_eval"]


def _check_db(db: Path) -> None:
    """``serve-eval --db``: a SQLite file (made at start-up if missing) in a folder this
    process may write in (its WAL files go beside it)."""
    import os
    import sqlite3

    where = f"--db {str(db)!r}"
    if db.is_dir():
        _fail(f"{where}: a folder, not a SQLite file")
    _check_folder("--db", db, db.parent)
    if not db.exists():
        return
    if not os.access(db, os.R_OK | os.W_OK):
        _fail(f"{where}: cannot read and write it")
    try:  # read only, a short wait: a server using the file still lets this read it
        with contextlib.closing(
            sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=1)
        ) as conn:
            conn.execute("PRAGMA schema_version")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            _fail(f"{where}: {exc}")
    except sqlite3.DatabaseError as exc:  # e.g. "file is not a database"
        _fail(f"{where}: {exc}")


def _reward_kind(value: str) -> str:
    """``--reward-kind`` must be one of reward.py's kinds."""
    from typing import get_args

    from agentfleet.evaluation.reward import RewardKind

    kinds = get_args(RewardKind)
    if value not in kinds:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(kinds)}")
    return value


def _eval_workers(value: str) -> str:
    """``--workers``: ``auto`` or a whole number >= 0 (0: remote workers only)."""
    if value == "auto" or (value.isdigit() and int(value) <= MAX_WORKERS):
        return value
    raise typer.BadParameter(f"{value!r} is neither 'auto' nor a whole number 0-{MAX_WORKERS}")


def _check_eval_options(
    early_stop_rounds: int, ray_workers: int | None, ray_address: str | None
) -> None:
    """``--early-stop-rounds`` 0 or 2 to the repeats' cap (EvalConfig's range, 0 for off);
    ``--ray-workers`` counts the actors of ``--ray-address``: nothing without it."""
    if early_stop_rounds != 0 and not 2 <= early_stop_rounds <= MAX_EVAL_REPEATS:
        _fail(
            f"--early-stop-rounds {early_stop_rounds}: expected 2 to {MAX_EVAL_REPEATS} "
            "(0: every round)"
        )
    if ray_workers is not None and ray_address is None:
        _fail("--ray-workers: only with --ray-address (the Ray actors it counts)")


def _check_cores(cores_per_worker: int, ray_address: str | None) -> None:
    """``--cores-per-worker``: local workers get no more than the CPUs this process may use
    (Ray actors' are the cluster's)."""
    from agentfleet.evaluation.pinning import available_cpus

    have = len(available_cpus())
    if ray_address is None and cores_per_worker > have:
        _fail(f"--cores-per-worker {cores_per_worker}: this process may use {have} CPU(s)")


def benchmark_memory(values: list[str]) -> dict[str, int]:
    """``--eval-memory BENCH=SIZE`` values as MB by benchmark; ``ValueError`` naming the
    option for an unknown benchmark or a bad size."""
    from agentfleet.sandbox.cli import parse_memory_mb, size_is_zero
    from agentfleet.tasks.profiles import PROFILES

    out: dict[str, int] = {}
    for value in values:
        bench, sep, size = value.partition("=")
        if not sep or bench not in PROFILES:
            raise ValueError(
                f"--eval-memory {value!r}: expected BENCH=SIZE with BENCH one of "
                f"{', '.join(PROFILES)} (e.g. swe-perf=16g)"
            )
        if bench in out:
            raise ValueError(f"--eval-memory {value!r}: {bench} given twice")
        if size_is_zero(size):
            raise ValueError(f"--eval-memory {value!r}: a size, not 0 (unset: the server's)")
        out[bench] = parse_memory_mb(size, f"--eval-memory {bench}", zero=None)
    return out


def serve_eval(
    host: Annotated[
        str, typer.Option(help="address to listen on (beyond loopback: needs --token)")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="port (0: any free one)")
    ] = DEFAULT_EVAL_PORT,
    db: Annotated[
        Path | None, typer.Option(help="SQLite file of jobs (default: in memory, lost at exit)")
    ] = None,
    workers: Annotated[
        str,
        typer.Option(
            callback=_eval_workers,
            help="local evaluations at once: N, or auto = usable CPUs // --cores-per-worker "
            "(0 with --ray-address; 0: only remote workers, eval-worker or Ray, run jobs)",
        ),
    ] = "auto",
    cores_per_worker: Annotated[
        int,
        typer.Option(
            min=0,
            help="CPUs pinned to each worker's commands (0: no pinning; at most the usable CPUs)",
        ),
    ] = 1,
    queue_limit: Annotated[
        int,
        typer.Option(
            min=1, max=10_000_000, help="jobs waiting for a worker before submits get 429"
        ),
    ] = 1000,
    max_body: Annotated[
        int,
        typer.Option(min=1024, max=1 << 30, help="largest request body in bytes (larger: 413)"),
    ] = 10 * 1024 * 1024,
    repeats: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_EVAL_REPEATS,
            help="timed rounds of each side (median compared); unset: a real benchmark's "
            f"task keeps its own protocol (SWE-Perf 20...) up to --max-repeats, others "
            f"{DEFAULT_EVAL_REPEATS}",
        ),
    ] = None,
    target_ci: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            max=0.999,
            help="add rounds until the speedup's 95% interval is narrower than this "
            "share of it (e.g. 0.03), up to --max-repeats",
        ),
    ] = None,
    max_repeats: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_EVAL_REPEATS,
            help="cap on rounds with --target-ci, and on a task's own protocol",
        ),
    ] = 20,
    early_stop_rounds: Annotated[
        int,
        typer.Option(
            help=f"2-{MAX_EVAL_REPEATS}: from this many rounds on, stop before --repeats once "
            "more rounds cannot change the reward; 0: every round (off anyway with "
            "--target-ci, --reference and a real benchmark's task)",
        ),
    ] = DEFAULT_EARLY_STOP_ROUNDS,
    reward_kind: Annotated[
        str,
        typer.Option(
            callback=_reward_kind,
            help="speedup -> reward: log_speedup | linear | binary | relative",
        ),
    ] = "log_speedup",
    reference: Annotated[
        bool,
        typer.Option(
            "--reference/--no-reference",
            help="also time the task's reference solution (info.reference_speedup)",
        ),
    ] = False,
    eval_memory: Annotated[
        list[str] | None,
        typer.Option(
            metavar="BENCH=SIZE",
            help="memory limit of a real benchmark's evaluation sandboxes (repeat), e.g. "
            "swe-perf=16g; within the sandbox server's --memory \\[default: the server's]",
        ),
    ] = None,
    sandbox_url: Annotated[
        str | None, typer.Option(help="sandbox server (default: in-process)")
    ] = None,
    sandbox_token: Annotated[
        str | None,
        typer.Option(envvar="AGENTFLEET_SANDBOX_TOKEN", help="bearer token of --sandbox-url"),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="AGENTFLEET_EVAL_TOKEN", help="bearer token required from clients"),
    ] = None,
    test_latency: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=MAX_TEST_LATENCY_S,
            help="test mode: every evaluation sleeps this long, reward 1 "
            "(--repeats, --reward-kind, --reference unused)",
        ),
    ] = None,
    dataset_root: DatasetRootOpt = None,
    confine: ConfineOpt = None,
    keep_days: Annotated[
        float,
        typer.Option(min=0.001, max=36500.0, help="prune finished jobs older than this (days)"),
    ] = 7.0,
    max_attempts: Annotated[
        int,
        typer.Option(min=1, max=100, help="starts of a job that never finishes before it fails"),
    ] = 3,
    lease_ttl: Annotated[
        float,
        typer.Option(
            min=1.0,
            max=24 * 3600.0,
            help="a remote worker's job is queued again after this many "
            "seconds without a heartbeat",
        ),
    ] = 30.0,
    ray_address: Annotated[
        str | None,
        typer.Option(help="run evaluation workers as Ray actors: auto, HOST:PORT, or local"),
    ] = None,
    ray_workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_WORKERS,
            help="Ray actors (default: the cluster's free CPUs // --cores-per-worker)",
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Serve evaluations over HTTP (default port 9528). See docs/evaluation.md."""
    from pydantic import ValidationError

    from agentfleet.evaluation.evaluator import EvalConfig
    from agentfleet.evaluation.server import run_server
    from agentfleet.sandbox.cli import confine_setting
    from agentfleet.tasks.oneline import one_line

    _check_cores(cores_per_worker, ray_address)
    _check_eval_options(early_stop_rounds, ray_workers, ray_address)
    _check_url("--sandbox-url", sandbox_url)
    if db is not None:
        _check_db(db)
    try:
        confine = confine_setting(confine, host)
    except ValueError as exc:
        _fail(str(exc))
    try:
        config = EvalConfig.model_validate(
            {
                "repeats": repeats,
                "target_ci": target_ci,
                "max_repeats": max_repeats,
                "early_stop_rounds": early_stop_rounds or None,
                "reference": reference,
                "reward": {"kind": reward_kind},
                "memory_mb": benchmark_memory(eval_memory or []),
            }
        )
        roots = dataset_roots(dataset_root or ())
    except ValidationError as exc:
        # names the field, should an option's range ever differ
        _fail(f"invalid evaluation settings: {one_line(exc, limit=1)}")
    except ValueError as exc:
        _fail(str(exc))
    _setup_logging(verbose)
    try:
        stopped_by = run_server(
            host=host,
            port=port,
            db_path=db,
            workers=None if workers == "auto" else int(workers),
            cores_per_worker=cores_per_worker,
            queue_limit=queue_limit,
            token=token,
            test_latency=test_latency,
            sandbox_url=sandbox_url,
            sandbox_token=sandbox_token,
            max_body=max_body,
            eval_config=config,
            dataset_roots=roots,
            confine=confine,
            keep_days=keep_days,
            max_attempts=max_attempts,
            lease_ttl_s=lease_ttl,
            ray_address=ray_address,
            ray_workers=ray_workers,
        )
    except ValueError as exc:  # e.g. a public host without a token
        _fail(str(exc))
    _exit_stopped(stopped_by)
