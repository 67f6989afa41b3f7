"""SWE-Perf (SWE-Perf/SWE-Perf): a row -> an image task.

Row: SWE-bench's fields plus ``efficiency_test`` (pytest node ids), ``duration_changes``
(the reference timings), ``problem_statement_realistic`` / ``_oracle``. The image is
``betty1202/sweb.eval.x86_64.<id with __ -> _s_>``, conda env ``testbed``. The workload
runs the efficiency tests under pytest, read by their durations.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Final

from agentfleet.tasks.model import Task
from agentfleet.tasks.profiles.common import (
    CONDA_TESTBED,
    SWE_BENCH_FIELDS,
    WORKDIR,
    Row,
    as_list,
    check_fields,
    image_task,
    test_paths,
)

BENCHMARK: Final = "swe-perf"
REQUIRED = ("instance_id", "repo", "base_commit", "patch", "efficiency_test")
OPTIONAL = SWE_BENCH_FIELDS | {
    "duration_changes",
    "problem_statement_realistic",
    "problem_statement_oracle",
}
PYTEST = "python -m pytest -p no:cacheprovider"
# SWE-Perf's timing: 3 warm-ups, then 20 runs per side
REPEATS, WARMUP = 20, 3

PROMPT = """\
The repository {repo} is checked out at {workdir}.

{statement}

These tests must keep passing and should run faster: {tests}
"""


def sweperf_image(iid: str) -> str:
    """SWE-Perf's naming rule: ``betty1202/sweb.eval.x86_64.<id, __ -> _s_>``."""
    return f"betty1202/sweb.eval.x86_64.{iid.replace('__', '_s_').lower()}"


def sweperf_task(row: Row, dataset: str, where: Path) -> Task:
    iid = check_fields(row, BENCHMARK, REQUIRED, OPTIONAL)
    tests = as_list(row, "efficiency_test", iid, BENCHMARK)
    ids = " ".join(shlex.quote(t) for t in tests)
    statement = (
        row.get("problem_statement_realistic")
        or row.get("problem_statement")
        or row.get("problem_statement_oracle")
        or "Make the code these tests exercise faster."
    )
    return image_task(
        row,
        iid,
        dataset,
        where,
        benchmark=BENCHMARK,
        prompt=PROMPT.format(
            repo=row["repo"], workdir=WORKDIR, statement=str(statement).strip(), tests=ids
        ),
        test_cmd=f"{PYTEST} -q {ids}",
        workload_cmd=f"{PYTEST} -vv --durations=0 {ids}",  # -vv: short ones too
        test_files=test_paths(tests),
        image=sweperf_image(iid),
        env_activate=CONDA_TESTBED,
        workload_parser="pytest",
        repeats=REPEATS,
        warmup=WARMUP,
        gold=str(row["patch"]),
        fields={
            "efficiency_test": tests,
            "duration_changes": row.get("duration_changes"),
            "test_patch": row.get("test_patch") or "",
            "problem_statement_oracle": row.get("problem_statement_oracle") or "",
        },
    )
