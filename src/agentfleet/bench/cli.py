"""``agentfleet bench``: the typer sub-app (mounted by ``agentfleet.cli`` as ``bench``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from agentfleet._cli import MAX_WORKERS, fail
from agentfleet.bench.common import (
    MissingExtra,
    confine_modes,
    machine_info,
    make_run_dir,
    write_results,
)

bench_app = typer.Typer(
    name="bench",
    help="Benchmarks: evaluation client patterns, sandbox execs, whole fleets, evaluation workers.",
    no_args_is_help=True,
    add_completion=False,
)


def _log(msg: str) -> None:
    sys.stderr.write(f"[bench] {msg}\n")
    sys.stderr.flush()


def _missing(exc: MissingExtra) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


def _counts(option: str, text: str, n: int | None = None) -> list[int]:
    """A comma list of whole numbers 1 to ``MAX_WORKERS`` (given ``n``, the word ``n`` is
    it); exit 2 naming the option otherwise."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words or not all(
        (n is not None and w == "n") or (w.isdigit() and 1 <= int(w) <= MAX_WORKERS) for w in words
    ):
        also = " or n" if n is not None else ""
        fail(f"{option} {text!r}: expected a comma list of whole numbers 1-{MAX_WORKERS}{also}")
    return [n if w == "n" and n is not None else int(w) for w in words]


def _confines(text: str, *, many: bool = True) -> str:
    """``--confine`` in the servers' words (a comma list if ``many``); exit 2 naming the
    option otherwise."""
    try:
        return ",".join(confine_modes(text, many=many))
    except ValueError as exc:
        fail(str(exc))


def _finish(kind: str, out: Path | None, payload: dict[str, Any], table_md: str) -> Path:
    run_dir = make_run_dir(kind, out)
    path = write_results(run_dir, payload)
    (run_dir / "table.md").write_text(table_md + "\n")
    typer.echo(table_md)
    typer.echo(f"\nresults: {path}")
    return run_dir


Rows = list[dict[str, Any]]


def _run(
    kind: str,
    config: dict[str, Any],
    measure: Callable[[], tuple[Rows, dict[str, Any]]],
    table: Callable[[Rows], str],
    out: Path | None,
    *,
    tags: dict[str, Any] | None = None,
    folder: str | None = None,
) -> tuple[Rows, Path]:
    """Run ``measure`` (rows, extra results), then write its run folder: results.json with
    the command, ``config``, the machine and timings, and table.md. A missing extra exits 2;
    a bad option value (a ``ValueError``) is a usage error: ``error: ...``, exit 2."""
    started = time.time()
    machine = machine_info()  # before the run: its load average is the one at the start
    try:
        rows, extra = measure()
    except MissingExtra as exc:
        raise _missing(exc) from None
    except ValueError as exc:
        fail(str(exc))
    payload = {
        "kind": kind,
        **(tags or {}),
        "command": " ".join(sys.argv),
        "config": config,
        "machine": machine,
        "started": started,
        "duration_s": time.time() - started,
        "rows": rows,
        **extra,
    }
    return rows, _finish(folder or kind, out, payload, table(rows))


Out = Annotated[
    Path | None,
    typer.Option("--out", help="Run folder (default runs/bench-<kind>-<time>/)."),
]


@bench_app.command("http")
def http_cmd(
    scenario: Annotated[
        str | None,
        typer.Option(
            help="Origin table to reproduce: single (1x10), ten-agents (10x1), "
            "fifty-evals (50x1). Overrides --n/--rounds."
        ),
    ] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Agents.")] = 10,
    rounds: Annotated[
        int, typer.Option("--rounds", min=1, help="Sequential evals per agent (R).")
    ] = 1,
    latency: Annotated[float, typer.Option(min=0.0, help="Seconds per evaluation.")] = 1.0,
    patterns: Annotated[
        str,
        typer.Option(
            help="Comma list of: blocking, per-call, threads, agentfleet, agentfleet-blocking, "
            "sync-threads, run-threads."
        ),
    ] = "blocking,per-call,threads,agentfleet,agentfleet-blocking",
    max_seconds: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Cap per pattern: a pattern predicted to take longer (blocking: "
            "N x R x latency) runs its first k agents and is extrapolated.",
        ),
    ] = 60.0,
    sweep: Annotated[
        bool, typer.Option(help="Run every N of --sweep-ns; writes plot.png.")
    ] = False,
    sweep_ns: Annotated[str, typer.Option(help="Ns of --sweep.")] = "10,50,200,1000",
    out: Out = None,
) -> None:
    """Evaluation client patterns against a test-mode evaluation server (own process)."""
    from agentfleet.bench.http_bench import SCENARIOS, HttpCase, plot_sweep, run_http_bench, table

    if scenario is not None:
        if scenario not in SCENARIOS:
            raise typer.BadParameter(f"choose from {', '.join(SCENARIOS)}", param_hint="--scenario")
        n, rounds = SCENARIOS[scenario]
    sweep_ns_list = _counts("--sweep-ns", sweep_ns)  # checked even unused
    ns = sweep_ns_list if sweep else [n]
    cases = [HttpCase(x, rounds, latency, max_seconds) for x in ns]
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    config = {
        "scenario": scenario,
        "ns": ns,
        "rounds": rounds,
        "latency_s": latency,
        "patterns": pats,
        "max_seconds": max_seconds,
        "sweep": sweep,
    }
    rows, run_dir = _run(
        "http", config, lambda: (run_http_bench(cases, pats, log=_log), {}), table, out
    )
    if sweep:
        msg = plot_sweep(rows, run_dir / "plot.png")
        typer.echo(msg if msg else f"plot: {run_dir / 'plot.png'}")


@bench_app.command("sandbox")
def sandbox_cmd(
    n: Annotated[
        int | None,
        typer.Option(
            "--n",
            min=1,
            help="Concurrent `sleep 1` execs/sandboxes (default 100; 20 for docker).",
        ),
    ] = None,
    docker_n: Annotated[
        int | None,
        typer.Option(
            "--docker-n", min=1, help="N of the docker rows (default: --n if given, else 20)."
        ),
    ] = None,
    seq: Annotated[
        int, typer.Option(min=1, help="Sequential `true` execs for the round trip.")
    ] = 200,
    sleep: Annotated[
        float, typer.Option(min=0.0, help="Seconds each concurrent exec sleeps.")
    ] = 1.0,
    backend: Annotated[
        str,
        typer.Option(
            help="process, docker, or a comma list (process,docker). docker is skipped, "
            "with a message, without a Docker engine."
        ),
    ] = "process",
    confine: Annotated[
        str,
        typer.Option(
            help="Process backend: required (bwrap), auto or off, or a comma list of them "
            "(off,required: a row each). yes and no: aliases of required and off."
        ),
    ] = "auto",
    null: Annotated[
        bool, typer.Option(help="Also time the null sandbox server (HTTP hop, no spawn).")
    ] = True,
    server_loop: Annotated[
        str,
        typer.Option(
            help="Event loop of the sandbox server: asyncio (agentfleet's servers' "
            "default), uvloop, or auto (uvloop when installed, uvicorn's default)."
        ),
    ] = "asyncio",
    out: Out = None,
) -> None:
    """N concurrent execs and the round trip of `true` over HTTP vs a bare subprocess."""
    from agentfleet.bench.sandbox_bench import run_sandbox_bench, table

    confine = _confines(confine)
    notes: list[str] = []

    def measure() -> tuple[Rows, dict[str, Any]]:
        rows, found = run_sandbox_bench(
            n=n,
            seq=seq,
            sleep_s=sleep,
            backend=backend,
            confine=confine,
            null=null,
            server_loop=server_loop,
            docker_n=docker_n,
            log=_log,
        )
        notes.extend(found)
        return rows, {"notes": found}

    config = {
        "n": n,
        "docker_n": docker_n,
        "seq": seq,
        "sleep_s": sleep,
        "backend": backend,
        "confine": confine,
        "server_loop": server_loop,
    }
    _run("sandbox", config, measure, table, out)
    for note in notes:
        typer.echo(note)


@bench_app.command("fleet")
def fleet_cmd(
    n: Annotated[
        int | None,
        typer.Option(
            "--n", min=1, help="Agents (default 200; ray: all perf-lite test tasks, at most 8)."
        ),
    ] = None,
    steps: Annotated[
        int, typer.Option(min=1, help="Steps per agent (S-1 `true`, then submit).")
    ] = 10,
    delay: Annotated[float, typer.Option(min=0.0, help="Model latency per step, seconds.")] = 0.5,
    runners: Annotated[
        str,
        typer.Option(help="Comma list of: agentfleet, threads (thread-per-agent runner)."),
    ] = "agentfleet,threads",
    workers: Annotated[
        str,
        typer.Option(help="Thread runner pool sizes, comma list; 'n' means one per agent."),
    ] = "n,16",
    max_seconds: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Cap per runner: a thread runner predicted to take longer runs a "
            "sample of agents and is extrapolated.",
        ),
    ] = 60.0,
    confine: Annotated[
        str,
        typer.Option(
            help="Process sandbox server: required (bwrap), auto or off. yes and no: "
            "aliases of required and off."
        ),
    ] = "auto",
    sandbox: Annotated[
        str,
        typer.Option(
            help="Sandbox server(s), comma list: process (real execs) and/or null "
            "(execs spawn nothing: isolates the runner's plumbing)."
        ),
    ] = "process",
    server_loop: Annotated[
        str,
        typer.Option(
            help="Event loop of the real sandbox server: asyncio (agentfleet's "
            "servers' default), uvloop, or auto (uvloop when installed)."
        ),
    ] = "asyncio",
    backend: Annotated[
        str,
        typer.Option(
            help="local: agentfleet vs thread runners; ray: the Ray backend's overhead "
            "against the local one (perf-lite tasks, S replies of `true`, no submit)."
        ),
    ] = "local",
    shards: Annotated[int, typer.Option(min=1, help="ray: actors.")] = 2,
    rounds: Annotated[
        int, typer.Option(min=1, help="ray: runs of each backend (interleaved).")
    ] = 2,
    out: Out = None,
) -> None:
    """A whole fleet with a fixed-latency model vs a thread-per-agent runner (or, with
    --backend ray, the Ray backend vs the local one)."""
    if backend == "ray":
        _fleet_ray(n, steps, delay, shards, rounds, out)
        return
    if backend != "local":
        raise typer.BadParameter("choose from local, ray", param_hint="--backend")
    from agentfleet.bench.fleet_bench import run_fleet_bench, table

    n = 200 if n is None else n
    ws = _counts("--workers", workers, n)
    confine = _confines(confine, many=False)
    rs = [r.strip() for r in runners.split(",") if r.strip()]
    config = {
        "n": n,
        "steps": steps,
        "delay_s": delay,
        "runners": rs,
        "workers": ws,
        "max_seconds": max_seconds,
        "confine": confine,
        "sandbox": sandbox,
        "server_loop": server_loop,
    }

    def measure() -> tuple[Rows, dict[str, Any]]:
        return run_fleet_bench(
            n=n,
            steps=steps,
            delay=delay,
            runners=rs,
            workers=ws,
            max_seconds=max_seconds,
            confine=confine,
            sandbox=sandbox,
            server_loop=server_loop,
            log=_log,
        )

    _run("fleet", config, measure, table, out)


def _fleet_ray(
    n: int | None, steps: int, delay: float, shards: int, rounds: int, out: Path | None
) -> None:
    """``bench fleet --backend ray`` (imports Ray, through ray_bench, only here)."""
    from agentfleet.bench.ray_bench import run_ray_bench, table

    config = {
        "n": n,
        "steps": steps,
        "delay_s": delay,
        "shards": shards,
        "rounds": rounds,
        "mode": "agent",
    }
    rows, _ = _run(
        "fleet",
        config,
        lambda: run_ray_bench(
            n=n, steps=steps, delay=delay, shards=shards, rounds=rounds, log=_log
        ),
        table,
        out,
        tags={"backend": "ray"},
        folder="fleet-ray",
    )
    for r in rows:
        if r["unexpected"]:
            typer.echo(f"note: {r['backend']}: unexpected exit statuses {r['statuses']}")


@bench_app.command("eval")
def eval_cmd(
    n: Annotated[
        int,
        typer.Option(
            "--n", min=1, help="Evaluations: perf-lite references and empty patches, alternately."
        ),
    ] = 40,
    modes: Annotated[
        str,
        typer.Option(
            help="Arms, comma list: W (W local workers, not pinned), Wp (pinned to 1 CPU "
            "each), Wr (W Ray actors pinned to 1 CPU each, no local worker)."
        ),
    ] = "1,2p",
    repeats: Annotated[int, typer.Option(min=1, help="Timed rounds per evaluation.")] = 5,
    target_ci: Annotated[
        float | None,
        typer.Option(min=0.0, help="Adaptive rounds: until the interval is this narrow."),
    ] = None,
    hog: Annotated[
        str,
        typer.Option(
            help="off | on (a busy loop pinned to the last CPU during each arm) | both "
            "(every arm without, then with it)."
        ),
    ] = "off",
    replot: Annotated[
        Path | None,
        typer.Option(help="Only redraw the SVG of this results JSON (written beside it)."),
    ] = None,
    out: Out = None,
) -> None:
    """Evaluation throughput and steadiness: the same real evaluations with 1 worker,
    pinned workers and Ray actors (see docs/benchmarks.md)."""
    import json

    from agentfleet.bench.eval_bench import plot_results, run_eval_bench, table

    if replot is not None:
        try:
            data = json.loads(replot.read_text())
            svg = plot_results(data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise typer.BadParameter(f"{replot}: {exc}", param_hint="--replot") from exc
        target = replot.with_suffix(".svg")
        target.write_text(svg)
        typer.echo(f"plot: {target}")
        return
    arms = [m.strip() for m in modes.split(",") if m.strip()]
    config = {"n": n, "modes": arms, "repeats": repeats, "target_ci": target_ci, "hog": hog}

    def measure() -> tuple[Rows, dict[str, Any]]:
        return run_eval_bench(
            n=n, modes=arms, repeats=repeats, target_ci=target_ci, hog=hog, log=_log
        )

    _, run_dir = _run("eval", config, measure, table, out)
    data = json.loads((run_dir / "results.json").read_text())
    (run_dir / "plot.svg").write_text(plot_results(data))
    typer.echo(f"plot: {run_dir / 'plot.svg'}")
