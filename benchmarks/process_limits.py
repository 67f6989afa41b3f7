"""What the process backend's limits cost per exec: limits on against limits off, paired.

Two ``ProcessBackend``s in one process, one with the default limits and one with every limit
off (whose exec path is the one of a server without limits: no gate), the same confinement.
Execs of ``true`` alternate between them (A B B A ...), so both see the same load; prints
the median server-side time of each and the median of the paired differences, then where the
time goes: a sandbox's cgroups made and removed, one ``cgroup.procs`` write per controller,
the ``prlimit`` calls, timed alone.

    .venv/bin/python benchmarks/process_limits.py [--execs 400] [--confine off|required]
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


async def _exec_ms(backend: ProcessBackend, sid: str) -> float:
    started = time.perf_counter()
    r = await backend.exec(sid, ExecRequest(command="true"), 1000)
    assert r.returncode == 0, r
    return (time.perf_counter() - started) * 1000


def _phases(backend: ProcessBackend, rounds: int = 200) -> dict[str, float]:
    """Microseconds per step, each timed alone (blocking; no event loop)."""
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
    join = prl = 0.0
    for _ in range(rounds):
        p = subprocess.Popen(["sleep", "30"])
        if cg is not None:
            t = time.perf_counter()
            cg.join(p.pid)
            join += time.perf_counter() - t
        t = time.perf_counter()
        resource.prlimit(p.pid, resource.RLIMIT_FSIZE, (1 << 30, 1 << 30))
        prl += time.perf_counter() - t
        p.kill()
        p.wait()
    if cg is not None:
        n = len(cg.fds)
        out[f"cgroup.procs writes per exec ({n} controllers, us)"] = join / rounds * 1e6
        cg.remove()
    out["one prlimit (us)"] = prl / rounds * 1e6
    return out


async def main(execs: int, confine: str) -> None:
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
        t_on: list[float] = []
        t_off: list[float] = []
        for i in range(execs):
            pair = [(on, "a", t_on), (off, "b", t_off)]
            for backend, sid, out in pair if i % 2 == 0 else pair[::-1]:
                out.append(await _exec_ms(backend, sid))
        diffs = [a - b for a, b in zip(t_on, t_off, strict=True)]
        print(f"exec `true`, {execs} pairs (ms, server side, median):")
        print(f"  limits on   {statistics.median(t_on):.3f}")
        print(f"  limits off  {statistics.median(t_off):.3f}")
        q = statistics.quantiles(diffs, n=4)
        mid = statistics.median(diffs)
        print(f"  paired difference: median {mid:+.3f}, IQR {q[0]:+.3f} .. {q[2]:+.3f}")
        for name, us in (await asyncio.to_thread(_phases, on)).items():
            print(f"  {name}: {us:.1f}")
        await on.aclose()
        await off.aclose()


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="benchmarks/process_limits.py")
    p.add_argument("--execs", type=int, default=400)
    p.add_argument("--confine", choices=["off", "required"], default="off")
    a = p.parse_args()
    asyncio.run(main(a.execs, a.confine))
