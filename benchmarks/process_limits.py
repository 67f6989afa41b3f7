"""What the process backend's limits cost per exec: limits on against limits off, paired.

Two ``ProcessBackend``s in one process, one with the default limits and one with every limit
off (whose exec path is the one of a server without limits: no gate), the same confinement.
Execs of ``true`` alternate between them (A B B A ...), ``--gap`` seconds apart (an agent's
commands come seconds apart; back-to-back execs hide costs that come back after a pause),
so both see the same load; prints the median server-side time of each and the median of
the paired differences, then where the time goes, each step timed alone, ``--gap`` apart: a
sandbox's cgroups made and removed; the spawning thread moving itself into a sandbox's
cgroups and back (what an exec does); writing a child's pid to ``cgroup.procs`` (what it
would cost instead); one ``prlimit``.

    .venv/bin/python benchmarks/process_limits.py [--execs 300] [--gap 0.05]
        [--confine off|required]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from agentfleet.sandbox.base import CreateSandbox, ExecRequest
from agentfleet.sandbox.limits import Resources
from agentfleet.sandbox.process import ProcessBackend


def _cpu() -> tuple[float, float]:
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


async def _exec_ms(backend: ProcessBackend, sid: str) -> tuple[float, float, float]:
    """Wall, server CPU and the command's CPU (its processes, bwrap's included), in ms."""
    cpu0, started = _cpu(), time.perf_counter()
    r = await backend.exec(sid, ExecRequest(command="true"), 1000)
    wall, cpu1 = time.perf_counter() - started, _cpu()
    assert r.returncode == 0, r
    return wall * 1000, (cpu1[0] - cpu0[0]) * 1000, (cpu1[1] - cpu0[1]) * 1000


def _phases(backend: ProcessBackend, gap: float, rounds: int = 100) -> dict[str, float]:
    """Microseconds per step (median), each timed alone (blocking; no event loop)."""
    tree = backend.enforcer.tree
    res = Resources("", 2048, None, 512, 1024, None)
    out: dict[str, float] = {}
    if tree.bases:
        t = time.perf_counter()
        for i in range(50):
            cg = tree.make(f"bench-{i}", res)
            assert cg is not None
            cg.remove()
        out["cgroups make + remove per sandbox (us)"] = (time.perf_counter() - t) / 50 * 1e6
    cg = tree.make("bench-join", res) if tree.bases else None
    moves: list[float] = []
    writes: list[float] = []
    prl: list[float] = []
    for _ in range(rounds):
        if cg is not None:
            time.sleep(gap)
            t = time.perf_counter()
            with tree.inside(cg):
                moves.append(time.perf_counter() - t)
                p = subprocess.Popen(["sleep", "30"])
            t = time.perf_counter()
            p.kill()
            p.wait()
            time.sleep(gap)
            p = subprocess.Popen(["sleep", "30"])
            t = time.perf_counter()
            cg.join(p.pid)
            writes.append(time.perf_counter() - t)
        else:
            p = subprocess.Popen(["sleep", "30"])
        t = time.perf_counter()
        resource.prlimit(p.pid, resource.RLIMIT_FSIZE, (1 << 30, 1 << 30))
        prl.append(time.perf_counter() - t)
        p.kill()
        p.wait()
    if cg is not None:
        n = len(cg.fds)
        out[f"thread moves itself in ({n} controllers), us"] = statistics.median(moves) * 1e6
        out[f"a pid written to cgroup.procs ({n} controllers), us"] = (
            statistics.median(writes) * 1e6
        )
        cg.remove()
    out["one prlimit, us"] = statistics.median(prl) * 1e6
    return out


async def main(execs: int, gap: float, confine: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        on = ProcessBackend(Path(tmp) / "on", confine=confine)
        off = ProcessBackend(
            Path(tmp) / "off",
            confine=confine,
            memory_mb=None,
            pids_limit=None,
            cpus=None,
            file_size_mb=None,
            cpu_time_s=None,
        )
        await on.create("a", None, CreateSandbox())
        await off.create("b", None, CreateSandbox())
        print(f"confined={on.confined} load={os.getloadavg()[0]:.2f} limits:")
        for name, v in on.limits_report().items():
            print(f"  {name}={v['value']} ({v['enforced_by'] or 'not enforced'})")
        for _ in range(20):  # warm-up
            await _exec_ms(on, "a")
            await _exec_ms(off, "b")
        t_on: list[tuple[float, float, float]] = []
        t_off: list[tuple[float, float, float]] = []
        for i in range(execs):
            pair = [(on, "a", t_on), (off, "b", t_off)]
            for backend, sid, out in pair if i % 2 == 0 else pair[::-1]:
                await asyncio.sleep(gap)
                out.append(await _exec_ms(backend, sid))
        print(f"exec `true`, {execs} pairs, {gap:g} s apart (ms, median):")
        for i, what in enumerate(("wall, server side", "server CPU", "command's CPU")):
            a, b = [x[i] for x in t_on], [x[i] for x in t_off]
            diffs = [x - y for x, y in zip(a, b, strict=True)]
            q = statistics.quantiles(diffs, n=4)
            print(
                f"  {what}: limits on {statistics.median(a):.3f}, off {statistics.median(b):.3f};"
                f" paired difference {statistics.median(diffs):+.3f}"
                f" (IQR {q[0]:+.3f} .. {q[2]:+.3f})"
            )
        for name, us in (await asyncio.to_thread(_phases, on, gap)).items():
            print(f"  {name}: {us:.1f}")
        await on.aclose()
        await off.aclose()


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="benchmarks/process_limits.py")
    p.add_argument("--execs", type=int, default=300)
    p.add_argument("--gap", type=float, default=0.05, help="seconds between execs")
    p.add_argument("--confine", choices=["off", "required"], default="off")
    a = p.parse_args()
    asyncio.run(main(a.execs, a.gap, a.confine))
