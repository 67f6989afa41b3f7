"""The measuring side of ``agentfleet bench sandbox``, run in its own process.

Modes (``config["mode"]``):

- ``http``: against a sandbox server at ``url`` through ``SandboxClient`` (the loop's shared
  ``HttpPool``): create ``n`` sandboxes, ``seq`` sequential ``true`` execs (round trip),
  ``n`` concurrent ``sleep`` execs (one per sandbox), delete them. The server's CPU time
  over the sequential execs comes from its ``/metrics`` (``process_cpu_seconds_total``),
  else from ``/proc`` of ``server_pid`` (servers without that metric).
- ``bare``: the same without any server: ``asyncio.create_subprocess_exec``.
- ``docker-cli``: ``docker exec <container> true`` (the CLI, as a subprocess) against one
  running container; ``n`` concurrent ``docker exec <container> sleep`` in that container.
- ``aiodocker``: the same over aiodocker, as the docker backend does it (create the exec,
  stream its output, inspect its exit code), without the backend or any HTTP server.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agentfleet.bench.common import child_main, cpu_seconds, median, peak_rss_mib, percentile

WARMUP = 10


def _summary_ms(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "median_ms": median(ms),
        "p95_ms": percentile(ms, 95),
        "min_ms": min(ms),
        "max_ms": max(ms),
    }


async def _server_cpu_s(client: Any, pid: int | None) -> float | None:
    """The server's CPU seconds so far: its Prometheus process metric, else psutil."""
    try:
        text = await client.metrics()
    except Exception:
        text = ""
    for line in text.splitlines():
        if line.startswith("process_cpu_seconds_total "):
            return float(line.split()[1])
    if pid is None:
        return None
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


async def _http(config: dict[str, Any]) -> dict[str, Any]:
    from agentfleet.http import HttpPool, preset_for_fleet
    from agentfleet.sandbox.base import CreateSandbox
    from agentfleet.sandbox.client import SandboxClient

    n, seq, sleep_s = int(config["n"]), int(config["seq"]), float(config["sleep_s"])
    limits = preset_for_fleet(n)
    HttpPool.configure_default(limits)
    client = SandboxClient(config["url"], token=config.get("token"))
    cpu0 = cpu_seconds()

    t0 = time.perf_counter()
    infos = await asyncio.gather(*(client.create(CreateSandbox()) for _ in range(n)))
    create_s = time.perf_counter() - t0
    ids = [i.sandbox_id for i in infos]

    for _ in range(WARMUP):
        await client.exec(ids[0], "true")
    rtt: list[float] = []
    server: list[float] = []
    pid = config.get("server_pid")
    cpu_before = await _server_cpu_s(client, pid)
    for _ in range(seq):
        t = time.perf_counter()
        res = await client.exec(ids[0], "true")
        rtt.append(time.perf_counter() - t)
        server.append(res.duration_s)
    cpu_after = await _server_cpu_s(client, pid)
    server_cpu_ms_per_exec = (
        (cpu_after - cpu_before) * 1000 / seq
        if cpu_before is not None and cpu_after is not None
        else None
    )

    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(client.exec(sid, f"sleep {sleep_s:g}") for sid in ids), return_exceptions=True
    )
    concurrent_s = time.perf_counter() - t0
    errors = sum(1 for r in results if isinstance(r, BaseException) or r.returncode != 0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client.delete(sid) for sid in ids))
    delete_s = time.perf_counter() - t0
    totals = HttpPool.for_loop().stats()["totals"]
    return {
        "create_s": create_s,
        "delete_s": delete_s,
        "concurrent_wall_s": concurrent_s,
        "concurrent_errors": errors,
        "rtt": _summary_ms(rtt),
        "server_exec": _summary_ms(server),
        "server_cpu_ms_per_exec": server_cpu_ms_per_exec,
        "client_cpu_s": cpu_seconds() - cpu0,
        "client_peak_rss_mib": peak_rss_mib(),
        "pool_limits": {"limit": limits.limit, "per_host": limits.limit_per_host},
        "client_connections_opened": totals.get("connections_created"),
    }


async def _bare(config: dict[str, Any]) -> dict[str, Any]:
    n, seq, sleep_s = int(config["n"]), int(config["seq"]), float(config["sleep_s"])
    dev = asyncio.subprocess.DEVNULL

    async def run(*argv: str) -> int:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=dev, stdout=dev, stderr=dev)
        return await proc.wait()

    cpu0 = cpu_seconds()
    out: dict[str, Any] = {}
    for label, argv in (("true", ("true",)), ("bash -c true", ("bash", "-c", "true"))):
        for _ in range(WARMUP):
            await run(*argv)
        samples: list[float] = []
        for _ in range(seq):
            t = time.perf_counter()
            await run(*argv)
            samples.append(time.perf_counter() - t)
        out[label] = _summary_ms(samples)
    t0 = time.perf_counter()
    codes = await asyncio.gather(*(run("sleep", f"{sleep_s:g}") for _ in range(n)))
    out["concurrent_wall_s"] = time.perf_counter() - t0
    out["concurrent_errors"] = sum(1 for c in codes if c != 0)
    out["client_cpu_s"] = cpu_seconds() - cpu0
    out["client_peak_rss_mib"] = peak_rss_mib()
    return out


async def _timed_runs(
    run: Any, n: int, seq: int, sleep_s: float, label: str = "true"
) -> dict[str, Any]:
    """``seq`` sequential ``run(["true"])`` after warm-ups, then ``n`` concurrent sleeps."""
    cpu0 = cpu_seconds()
    for _ in range(WARMUP):
        await run(["true"])
    samples: list[float] = []
    for _ in range(seq):
        t = time.perf_counter()
        await run(["true"])
        samples.append(time.perf_counter() - t)
    t0 = time.perf_counter()
    codes = await asyncio.gather(
        *(run(["sleep", f"{sleep_s:g}"]) for _ in range(n)), return_exceptions=True
    )
    concurrent_s = time.perf_counter() - t0
    return {
        label: _summary_ms(samples),
        "concurrent_wall_s": concurrent_s,
        "concurrent_errors": sum(1 for c in codes if c != 0),
        "client_cpu_s": cpu_seconds() - cpu0,
        "client_peak_rss_mib": peak_rss_mib(),
    }


async def _docker_cli(config: dict[str, Any]) -> dict[str, Any]:
    n, seq, sleep_s = int(config["n"]), int(config["seq"]), float(config["sleep_s"])
    container = str(config["container"])
    dev = asyncio.subprocess.DEVNULL

    async def run(argv: list[str]) -> int:
        proc = await asyncio.create_subprocess_exec(
            "docker", "exec", container, *argv, stdin=dev, stdout=dev, stderr=dev
        )
        return await proc.wait()

    return await _timed_runs(run, n, seq, sleep_s)


async def _aiodocker(config: dict[str, Any]) -> dict[str, Any]:
    from agentfleet.sandbox.containers import close_client, connect, drain

    n, seq, sleep_s = int(config["n"]), int(config["seq"]), float(config["sleep_s"])
    client, connector = await connect()
    try:
        container = client.containers.container(str(config["container"]))

        async def run(argv: list[str]) -> int:
            ex = await container.exec(argv, stdout=True, stderr=True)
            await drain(ex.start(detach=False))
            info = await ex.inspect()
            return int(info.get("ExitCode") or 0)

        return await _timed_runs(run, n, seq, sleep_s)
    finally:
        await close_client(client, connector)


def handle(config: dict[str, Any]) -> dict[str, Any]:
    mode = config["mode"]
    if mode == "http":
        return asyncio.run(_http(config))
    if mode == "docker-cli":
        return asyncio.run(_docker_cli(config))
    if mode == "aiodocker":
        return asyncio.run(_aiodocker(config))
    return asyncio.run(_bare(config))


if __name__ == "__main__":
    child_main(handle)
