"""Shared plumbing of the benchmarks: child processes, servers, tables, run folders.

The command side (``agentfleet bench ...``) is plain synchronous code: it starts the servers
and every measured client in their own processes, so each pattern's CPU time and peak RSS are
its own, and a pattern that blocks (deliberately, like the origin's ``requests.post`` inside
``async def``) never blocks anything else.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # loopback only


# process-level helpers (used by the children) ------------------------------------------
def raise_nofile(want: int = 65536) -> int:
    """Raise the soft open-files limit towards ``want`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def peak_rss_mib() -> float:
    """Peak resident set size of this process: ``VmHWM`` of /proc/self/status. Not
    ``ru_maxrss``, which Linux carries over from the parent at exec (the fallback)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)  # kB
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 1024, 1)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# children -----------------------------------------------------------------------------
class ChildError(RuntimeError):
    pass


class MissingExtra(RuntimeError):
    """A package the bench needs is not installed (the message says how to install it)."""


def require(module: str, why: str, extra: str = "bench") -> None:
    """Fail up front, with the install hint, when ``module`` is not importable."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(f"{why} needs {module}: pip install 'agentfleet[{extra}]'")


def run_child(module: str, config: dict[str, Any], *, timeout: float = 3600) -> dict[str, Any]:
    """Run ``python -m module '<json config>'`` and return the JSON object it prints last."""
    cmd = [sys.executable, "-m", module, json.dumps(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-3000:]
        raise ChildError(f"{module} failed (exit {proc.returncode}): {tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def child_main(handler: Any) -> None:
    """Entry point of a measuring child: config JSON in argv[1], result JSON on stdout."""
    config = json.loads(sys.argv[1])
    raise_nofile()
    result = handler(config)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


# servers in their own processes --------------------------------------------------------
def http_json(method: str, url: str, body: Any = None, timeout: float = 30) -> Any:
    """A one-off request on a fresh connection (stdlib only: the orchestrator has no loop)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


@dataclass
class ServerProcess:
    """A server started as ``python -m module --port 0 ...`` that prints ``PORT <n>``."""

    module: str
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    info: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment
    token: str | None = None  # the bearer token its clients send (None: it wants none)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, ready_path: str = "/healthz", timeout: float = 60) -> ServerProcess:
        cmd = [sys.executable, "-m", self.module, "--host", HOST, "--port", "0", *self.args]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **self.env} if self.env else None,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise ChildError(f"{self.module} did not start (said {line!r})")
        words = line.split()
        self.port = int(words[1])
        self.info = dict(w.split("=", 1) for w in words[2:] if "=" in w)
        while True:
            try:
                http_json("GET", self.url + ready_path, timeout=5)
                return self
            except (urllib.error.URLError, OSError, ValueError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise ChildError(f"{self.module} never became ready") from None
                time.sleep(0.05)

    def cpu_seconds(self) -> float:
        try:
            import psutil

            t = psutil.Process(self.pid).cpu_times()
            return float(t.user + t.system)
        except Exception:
            return float("nan")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --confine of the benches: the servers' words; yes / no, the words of earlier versions
# (in the recorded results' commands), still mean required / off
CONFINE_ALIASES = {"yes": "required", "no": "off"}


def confine_modes(text: str, *, many: bool = True) -> list[str]:
    """``--confine`` (a comma list if ``many``, else one word) in the servers' words
    (required | auto | off); ``ValueError`` naming the option otherwise."""
    from agentfleet.sandbox.process import CONFINE_MODES

    words = [w.strip() for w in text.split(",") if w.strip()]
    modes = [CONFINE_ALIASES.get(w, w) for w in words]
    if not modes or (len(modes) > 1 and not many) or any(m not in CONFINE_MODES for m in modes):
        lists = ", or a comma list of them" if many else ""
        raise ValueError(f"--confine {text!r}: expected {' | '.join(CONFINE_MODES)}{lists}")
    return modes


@contextlib.contextmanager
def sandbox_server(
    confine: str = "auto",
    max_sandboxes: int = 4096,
    loop: str = "asyncio",
    backend: str = "process",
) -> Iterator[ServerProcess]:
    """The real sandbox server (``backend``: process or docker) in its own process, sandboxes
    in a temp folder removed afterwards. ``loop``: uvicorn's event loop (asyncio, like
    agentfleet's servers; ``auto``: uvloop when installed). It requires a fresh token (in its
    environment, not its argv), which clients find in ``srv.token``."""
    import secrets
    import shutil
    import tempfile

    from agentfleet.sandbox.base import TOKEN_ENV

    root = tempfile.mkdtemp(prefix="agentfleet-bench-sb-")
    try:
        args = ["--confine", confine, "--max-sandboxes", str(max_sandboxes), "--root", root]
        args += ["--loop", loop, "--backend", backend]
        token = secrets.token_urlsafe(24)
        server = ServerProcess("agentfleet.bench.sandboxserver", args, env={TOKEN_ENV: token})
        server.token = token
        with server as srv:
            yield srv
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bind_free_socket(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP (not 0) so asyncio sets TCP_NODELAY on accepted sockets (as serving.py).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    return sock


def serve_app_announcing_port(
    app: Any,
    host: str,
    port: int,
    log_level: str = "warning",
    extra: str = "",
    loop: str = "asyncio",
) -> None:
    """Serve ``app`` with uvicorn on ``host:port`` (0: free), printing ``PORT <n>`` first
    (followed by ``extra``, ``key=value`` words the parent reads as :attr:`ServerProcess.info`)."""
    import uvicorn

    from agentfleet.serving import uvicorn_config

    raise_nofile()
    sock = bind_free_socket(host, port)
    sys.stdout.write(f"PORT {sock.getsockname()[1]} {extra}".rstrip() + "\n")
    sys.stdout.flush()
    config = uvicorn_config(app, host, sock.getsockname()[1], log_level=log_level)
    config.timeout_graceful_shutdown = 3
    config.loop = loop  # "asyncio" as agentfleet's servers; "auto": uvloop when installed
    uvicorn.Server(config).run(sockets=[sock])


# output ---------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


Column = tuple[str, str | Callable[[dict[str, Any]], Any]]  # (header, key or function of a row)


def run_notes(res: Mapping[str, Any], extrapolated: str = "") -> list[str]:
    """A bench row's notes: how it was extrapolated (if it was), the pool limits it ran with."""
    notes = [extrapolated] if extrapolated else []
    if "pool_limits" in res:
        lim = res["pool_limits"]
        notes.append(f"pool {lim['limit']}/{lim['per_host']}")
    return notes


def columns_table(columns: Sequence[Column], rows: Iterable[dict[str, Any]]) -> str:
    """A markdown table of result rows: a column per ``(header, key)``, where the key is a
    field of the row or a function of it."""
    return markdown_table(
        [header for header, _ in columns],
        [[key(r) if callable(key) else r[key] for _, key in columns] for r in rows],
    )


def make_run_dir(kind: str, out: Path | None) -> Path:
    if out is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"bench-{kind}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def machine_info() -> dict[str, Any]:
    import platform

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "nofile_soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


NOISE_LOOP = "s = 0\nfor i in range(1_000_000):\n    s += i"  # about 0.1 s of CPU


def child_cpu_s(cmd: str | list[str], **run: Any) -> float:
    """CPU seconds (user + sys) of one run of ``cmd`` as a child process, as the
    evaluator's timer reads them; ``run``: more arguments of :func:`subprocess.run`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, **run)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def cpu_noise(runs: int = 20) -> dict[str, Any]:
    """How steady this machine's CPU is now: the CPU time of one fixed loop in a fresh
    interpreter, ``runs`` times. No timing harness is steadier than this; an arm's spread
    is read against it (a shared or virtual host can spread this loop by 10% and more)."""
    times = [child_cpu_s([sys.executable, "-c", NOISE_LOOP]) for _ in range(runs)]
    med = statistics.median(times)
    return {
        "runs": runs,
        "median_s": med,
        "cv": statistics.pstdev(times) / med if med > 0 else 0.0,
        "within_5pct": sum(abs(t - med) <= 0.05 * med for t in times),
    }


def write_results(run_dir: Path, payload: dict[str, Any]) -> Path:
    path = run_dir / "results.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    box: list[float] = []
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - t0)
