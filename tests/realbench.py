"""A small real-benchmark dataset for tests: C code rebuilt by ``rebuild_cmd``, a gold patch
that changes the C, and one task per benchmark (GSO, SWE-fficiency, SWE-Perf) whose workload
reports its own times as that benchmark's harness reads them. Folder tasks, so they run on
the process backend; an image task differs only in where the repository comes from."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import textwrap
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agentfleet.sandbox import ProcessBackend, SandboxService

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}

# count() is O(n^2) on purpose; the slow version computes it twice, the gold once.
SLOW_C = """\
#include <stdio.h>
#include <stdlib.h>
static unsigned long count(long n) {
    unsigned long s = 0;
    for (long i = 0; i < n; i++)
        for (long j = 0; j < i; j++) s++;
    return s;
}
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    unsigned long a = count(n), b = count(n);
    printf("%lu\\n", a == b ? a : 0);
    return 0;
}
"""
GOLD_C = SLOW_C.replace("unsigned long a = count(n), b = count(n);", "unsigned long a = count(n);")
GOLD_C = GOLD_C.replace("a == b ? a : 0", "a")
WRONG_C = GOLD_C.replace('printf("%lu\\n", a);', 'printf("%lu\\n", n > 1000 ? a + 1 : a);')
BROKEN_C = GOLD_C.replace("return s;", "return s")  # a syntax error: the build fails

# Each workload times ./prog per "test" by the CPU time of the child (steadier than wall
# time on a shared machine) and prints it the way its benchmark's harness reads it.
GSO_BENCH = """\
import resource, subprocess
def cpu():
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime
for n in (12000, 14000):
    t = cpu()
    out = subprocess.run(["./prog", str(n)], capture_output=True, text=True, check=True).stdout
    print(out.strip())
    print(f"Execution time: {cpu() - t:.6f}s")
"""
MEAN_BENCH = """\
import resource, statistics, subprocess
def cpu():
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime
times = []
for _ in range(2):
    t = cpu()
    out = subprocess.run(["./prog", "13000"], capture_output=True, text=True, check=True).stdout
    times.append(cpu() - t)
print(out.strip())
print("Mean:", statistics.mean(times))
print("Std Dev:", statistics.stdev(times))
"""
# SWE-Perf's harness reads the call durations of named tests from pytest --durations=0 -vv.
PERF_TEST = "tests/test_perf.py::test_count"
PYTEST_BENCH = f"""\
import resource, subprocess
def cpu():
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime
t = cpu()
out = subprocess.run(["./prog", "13000"], capture_output=True, text=True, check=True).stdout
print(out.strip())
print(f"{{cpu() - t:.6f}}s call     {PERF_TEST}")
"""
CHECK_SH = 'test "$(./prog 100)" = 4950\n'

TASKS = {
    "gso-count": ("gso", "gso", "python3 bench_gso.py", {"opt_commit": "gold"}),
    "swef-count": ("swefficiency", "mean", "python3 bench_mean.py", {"speedup": 2.0}),
    "perf-count": (
        "swe-perf",
        "pytest",
        "python3 bench_pytest.py",
        {"efficiency_test": [PERF_TEST]},
    ),
}


def git_init(path: Path) -> None:
    env = {**os.environ, **GIT_ENV}
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "--no-gpg-sign", "-m", "base"],
    ):
        subprocess.run(cmd, cwd=path, check=True, env=env, capture_output=True)


def make_patch(repo: Path, work: Path, changes: dict[str, str]) -> str:
    shutil.copytree(repo, work)
    git_init(work)
    for rel, content in changes.items():
        (work / rel).write_text(content)
    env = {**os.environ, **GIT_ENV}
    subprocess.run(["git", "add", "-A"], cwd=work, check=True, env=env)
    out = subprocess.run(
        ["git", "diff", "--cached", "--binary", "--", *changes],
        cwd=work,
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    return out.stdout


def build_dataset(root: Path) -> dict[str, str]:
    """Writes the dataset under ``root``; returns the patches by name (and "path")."""
    ids = list(TASKS)
    (root / "dataset.yaml").write_text(
        f"name: realbench\ndescription: test dataset\nsplits:\n  test: [{', '.join(ids)}]\n"
    )
    src = root / "_src"
    (src / "tests").mkdir(parents=True)
    (src / "prog.c").write_text(SLOW_C)
    (src / "bench_gso.py").write_text(GSO_BENCH)
    (src / "bench_mean.py").write_text(MEAN_BENCH)
    (src / "bench_pytest.py").write_text(PYTEST_BENCH)
    (src / "tests" / "check.sh").write_text(CHECK_SH)
    subprocess.run(["gcc", "-O0", "-o", "prog", "prog.c"], cwd=src, check=True)
    work = root / "_patches"
    work.mkdir()
    patches = {
        "gold": make_patch(src, work / "gold", {"prog.c": GOLD_C}),
        "wrong": make_patch(src, work / "wrong", {"prog.c": WRONG_C}),
        "broken": make_patch(src, work / "broken", {"prog.c": BROKEN_C}),
        "cheat": make_patch(src, work / "cheat", {"prog.c": GOLD_C, "tests/check.sh": "exit 0\n"}),
        "empty": "",
    }
    for task_id, (benchmark, parser, workload, fields) in TASKS.items():
        task_dir = root / task_id
        shutil.copytree(src, task_dir / "repo")
        (task_dir / "task.yaml").write_text(
            textwrap.dedent(
                f"""\
                title: count pairs ({benchmark})
                prompt: make ./prog faster; keep its output
                test_cmd: sh tests/check.sh
                workload_cmd: {workload}
                rebuild_cmd: gcc -O0 -o prog prog.c
                workload_parser: {parser}
                benchmark: {benchmark}
                test_files: [tests]
                timeout_s: 120
                """
            )
            + f"benchmark_fields: {fields!r}\n"
        )
        (task_dir / "solution.patch").write_text(patches["gold"])
    return {"path": str(root), **patches}


class WorkloadRuns:
    """Sandboxes (a service or a client) passing every call through, counting per sandbox
    the commands that run ``workload`` (the output check, each warm-up and timed run)."""

    def __init__(self, inner: Any, workload: str) -> None:
        self.inner = inner
        self.needle = shlex.quote(workload)  # how the check's and the timer's commands hold it
        self.runs: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def exec(self, sandbox_id: str, command: str, *args: Any, **kwargs: Any) -> Any:
        if self.needle in command:
            self.runs[sandbox_id] += 1
        return await self.inner.exec(sandbox_id, command, *args, **kwargs)


@asynccontextmanager
async def dataset_service(tmp_path: Path, dataset: dict[str, str]) -> AsyncIterator[SandboxService]:
    """Process-backend sandboxes over a :func:`build_dataset` folder; none left behind."""
    backend = ProcessBackend(root=tmp_path / "sandboxes")
    async with SandboxService(backend, dataset_roots=[Path(dataset["path"])]) as svc:
        yield svc
        assert len(svc) == 0, "a sandbox was left behind"
