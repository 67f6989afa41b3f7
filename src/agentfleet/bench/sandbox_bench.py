"""``agentfleet bench sandbox``: concurrent and sequential execs over HTTP vs bare processes.

The sandbox server (process or docker backend) runs in its own process
(``agentfleet.bench.sandboxserver``); the client in another (``agentfleet.bench.sandbox_client``).
For docker, the bench also times ``docker exec`` (the CLI) and aiodocker's exec against one
container it starts itself (``docker run -d --network none <image> sleep 600``, removed by id
afterwards).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

from agentfleet.bench.common import (
    Column,
    ServerProcess,
    columns_table,
    confine_modes,
    run_child,
    sandbox_server,
)
from agentfleet.sandbox.base import DEFAULT_IMAGE

BACKEND_CHOICES = ("process", "docker")
DEFAULT_N = 100
DEFAULT_DOCKER_N = 20  # containers start in ~0.5 s each; the server bounds creations
DOCKER_IMAGE = DEFAULT_IMAGE


def docker_backend_available() -> bool:
    return importlib.util.find_spec("agentfleet.sandbox.docker") is not None


@functools.cache
def docker_problem() -> str | None:
    """Why the docker rows cannot run here (None: they can)."""
    if not docker_backend_available():
        return "agentfleet.sandbox.docker is not importable"
    if shutil.which("docker") is None:
        return "no docker CLI"
    host = os.environ.get("DOCKER_HOST", "")
    if not host and not os.path.exists("/var/run/docker.sock"):
        return "no Docker engine (no DOCKER_HOST, no /var/run/docker.sock)"
    try:
        proc = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Id}}", DOCKER_IMAGE],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"docker CLI does not answer: {e}"
    if proc.returncode != 0:
        return f"image {DOCKER_IMAGE} not usable: {proc.stderr.strip()[:200]}"
    return None


@contextlib.contextmanager
def bench_container(image: str = DOCKER_IMAGE) -> Iterator[str]:
    """One throw-away container (no network) for the bare exec rows, removed by id.

    Labelled like the docker backend's, so if the bench dies the next sandbox server start
    (owner pid gone) or ``agentfleet sandbox gc`` removes it.
    """
    import socket
    import time
    import uuid

    import psutil

    from agentfleet.sandbox import containers as d
    from agentfleet.sandbox.folders import process_start_ticks

    life_s = 600
    labels = {
        d.LABEL_OWNER: f"bench-{uuid.uuid4().hex}",
        d.LABEL_SANDBOX: "bench",
        d.LABEL_RUN: "bench-sandbox",
        d.LABEL_EXPIRES: f"{time.time() + life_s:.3f}",
        d.LABEL_HOST: socket.gethostname(),
        d.LABEL_PID: str(os.getpid()),
        d.LABEL_PID_STARTED: f"{psutil.Process().create_time():.3f}",
        d.LABEL_PID_TICKS: str(process_start_ticks(os.getpid())),
    }
    label_args = [arg for k, v in labels.items() for arg in ("--label", f"{k}={v}")]
    proc = subprocess.run(
        ["docker", "run", "-d", "--network", "none", *label_args, image, "sleep", str(life_s)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    cid = proc.stdout.strip()
    if proc.returncode != 0 or not cid:
        raise RuntimeError(f"docker run failed: {proc.stderr.strip()[:300]}")
    try:
        yield cid
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, timeout=120, check=False)


def parse_backends(backend: str) -> list[str]:
    names = [b.strip() for b in backend.split(",") if b.strip()]
    if names == ["all"]:
        names = list(BACKEND_CHOICES)
    for b in names:
        if b not in BACKEND_CHOICES:
            raise ValueError(f"unknown backend {b!r} (process, docker, or a comma list)")
    if not names:
        raise ValueError("--backend: name at least one of process, docker")
    return names


def _http_row(
    what: str, backend: str, confined: bool | None, n: int, res: dict[str, Any], server_cpu: float
) -> dict[str, Any]:
    return {
        "what": what,
        "backend": backend,
        "confined": confined,
        "n": n,
        "concurrent_wall_s": res["concurrent_wall_s"],
        "concurrent_errors": res["concurrent_errors"],
        "rtt_median_ms": res["rtt"]["median_ms"],
        "rtt_p95_ms": res["rtt"]["p95_ms"],
        "server_exec_median_ms": res["server_exec"]["median_ms"],
        "server_cpu_ms_per_true": res.get("server_cpu_ms_per_exec"),
        "create_s": res["create_s"],
        "delete_s": res["delete_s"],
        "client_cpu_s": res["client_cpu_s"],
        "client_peak_rss_mib": res["client_peak_rss_mib"],
        "server_cpu_s": server_cpu,
        "client_connections_opened": res["client_connections_opened"],
        "pool_limits": res["pool_limits"],
        "raw": res,
    }


def _bare_row(what: str, backend: str, n: int, res: dict[str, Any], key: str) -> dict[str, Any]:
    return {
        "what": what,
        "backend": backend,
        "confined": False,
        "n": n,
        "concurrent_wall_s": res["concurrent_wall_s"],
        "concurrent_errors": res["concurrent_errors"],
        "rtt_median_ms": res[key]["median_ms"],
        "rtt_p95_ms": res[key]["p95_ms"],
        "server_exec_median_ms": None,
        "server_cpu_ms_per_true": None,
        "create_s": None,
        "delete_s": None,
        "client_cpu_s": res["client_cpu_s"],
        "client_peak_rss_mib": res["client_peak_rss_mib"],
        "server_cpu_s": None,
        "client_connections_opened": None,
        "pool_limits": None,
        "raw": res,
    }


def _loop_suffix(server_loop: str) -> str:
    return "" if server_loop == "asyncio" else f" [{server_loop} loop]"


def run_sandbox_bench(
    *,
    n: int | None = None,
    seq: int,
    sleep_s: float,
    backend: str = "process",
    confine: str = "auto",
    null: bool = True,
    server_loop: str = "asyncio",
    docker_n: int | None = None,
    aiodocker: bool = True,
    log: Any = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of the sandbox bench. ``n``: concurrent execs (default 100); ``docker_n``: the
    same for the docker rows (default ``n`` when given, else 20)."""
    confines = confine_modes(confine)
    if server_loop not in ("auto", "asyncio", "uvloop"):
        raise ValueError("--server-loop: choose from auto, asyncio, uvloop")
    backends = parse_backends(backend)
    n_proc = n if n is not None else DEFAULT_N
    n_docker = docker_n if docker_n is not None else (n if n is not None else DEFAULT_DOCKER_N)
    notes: list[str] = []
    rows: list[dict[str, Any]] = []

    def http_child(srv: ServerProcess, k: int) -> dict[str, Any]:
        return run_child(
            "agentfleet.bench.sandbox_client",
            {"mode": "http", "url": srv.url, "token": srv.token, "n": k, "seq": seq}
            | {"server_pid": srv.pid, "sleep_s": sleep_s},
        )

    if "process" in backends:
        for c in confines:
            with sandbox_server(c, n_proc + 16, server_loop) as srv:
                confined = srv.info.get("confined") == "1"
                if log is not None:
                    log(f"sandbox: process backend (confined={confined}) n={n_proc} seq={seq}")
                cpu0 = srv.cpu_seconds()
                res = http_child(srv, n_proc)
                server_cpu = srv.cpu_seconds() - cpu0
            label = "process backend over HTTP" + (" (bwrap)" if confined else " (unconfined)")
            row = _http_row(
                label + _loop_suffix(server_loop), "process", confined, n_proc, res, server_cpu
            )
            row["server_loop"] = server_loop
            rows.append(row)

    docker_ran = False
    if "docker" in backends:
        problem = docker_problem()
        if problem is not None:
            notes.append(f"docker: skipped -- {problem}")
        else:
            docker_ran = True
            if docker_n is None and n is None:
                notes.append(
                    f"docker: N = {n_docker} (the default for docker: a container starts in "
                    "about 0.5 s and the server bounds concurrent creations; pass --n or "
                    "--docker-n to change it)"
                )
            with sandbox_server("no", n_docker + 16, server_loop, backend="docker") as srv:
                if log is not None:
                    log(f"sandbox: docker backend n={n_docker} seq={seq}")
                cpu0 = srv.cpu_seconds()
                res = http_child(srv, n_docker)
                server_cpu = srv.cpu_seconds() - cpu0
            row = _http_row(
                "docker backend over HTTP" + _loop_suffix(server_loop),
                "docker",
                None,
                n_docker,
                res,
                server_cpu,
            )
            row["server_loop"] = server_loop
            rows.append(row)
            with bench_container() as cid:
                cfg = {"container": cid, "n": n_docker, "seq": seq, "sleep_s": sleep_s}
                clients = [("bare docker exec (CLI)", "docker-cli")]
                if aiodocker:
                    clients.append(("bare aiodocker exec", "aiodocker"))
                for what, mode in clients:
                    if log is not None:
                        log(f"sandbox: {what} n={n_docker} seq={seq}")
                    res = run_child("agentfleet.bench.sandbox_client", {"mode": mode, **cfg})
                    res["container"] = cid
                    rows.append(_bare_row(what, mode, n_docker, res, "true"))

    n_main = n_proc if "process" in backends else n_docker
    if null:
        # the same client against a server whose execs spawn nothing: the HTTP hop alone
        with ServerProcess("agentfleet.bench.nullsandbox", ["--loop", server_loop]) as srv:
            if log is not None:
                log(f"sandbox: null sandbox server (no spawn) n={n_main} seq={seq}")
            cpu0 = srv.cpu_seconds()
            res = http_child(srv, n_main)
            server_cpu = srv.cpu_seconds() - cpu0
        rows.append(
            _http_row(
                "null sandbox server over HTTP (no spawn)" + _loop_suffix(server_loop),
                "null",
                False,
                n_main,
                res,
                server_cpu,
            )
        )
    if log is not None:
        log(f"sandbox: bare subprocess n={n_main} seq={seq}")
    bare = run_child(
        "agentfleet.bench.sandbox_client",
        {"mode": "bare", "n": n_main, "seq": seq, "sleep_s": sleep_s},
    )
    for label in ("true", "bash -c true"):
        rows.append(
            _bare_row(f"bare create_subprocess_exec({label!r})", "bare", n_main, bare, label)
        )
    notes.append(
        f"concurrent: N execs of `sleep {sleep_s:g}` at once, one per sandbox; "
        f"round trip: median/p95 of {seq} sequential `true` execs after 10 warm-ups; "
        "server CPU ms per true: the server's CPU time over those execs / their number "
        "(`process_cpu_seconds_total` of its /metrics, else its /proc stat); "
        "the process backend runs commands as `bash -c <command>` (under bwrap when confined); "
        "the null sandbox server answers execs without spawning anything (the HTTP hop alone)."
    )
    if docker_ran:
        notes.append(
            "docker: the backend runs each command as `bash -c WRAPPER` in the sandbox's "
            "container (a process group, a timeout, a kill sweep); the bare docker rows run "
            "`true` / N concurrent `sleep` in one container the bench starts "
            "(`docker run -d --network none ... sleep 600`, removed afterwards): the CLI as a "
            "subprocess, and aiodocker's exec (create, stream, inspect) with no server."
        )
    return rows, notes


COLUMNS: list[Column] = [
    ("what", "what"),
    ("N", "n"),
    ("N x sleep wall s", "concurrent_wall_s"),
    ("errors", "concurrent_errors"),
    ("true median ms", "rtt_median_ms"),
    ("true p95 ms", "rtt_p95_ms"),
    ("server-side exec median ms", "server_exec_median_ms"),
    ("server CPU ms per true", "server_cpu_ms_per_true"),
    ("create N s", "create_s"),
    ("client CPU s", "client_cpu_s"),
    ("client RSS MiB", "client_peak_rss_mib"),
    ("server CPU s", "server_cpu_s"),
]


table = functools.partial(columns_table, COLUMNS)
