"""SWE-fficiency (swefficiency/swefficiency): a row -> an image task.

Row: SWE-bench's fields plus ``workload`` (a Python script printing ``Mean:`` /
``Std Dev:``), ``rebuild_cmd``, ``test_cmd``, ``covering_tests``, ``PASS_TO_PASS``,
``image_name`` and the gold ``speedup``. The image is the row's ``image_name`` (else
``docker_image``, else SWE-bench's rule), conda env ``testbed``.
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
    heredoc_python,
    image_task,
    swebench_image,
    test_paths,
)

BENCHMARK: Final = "swefficiency"
REQUIRED = ("instance_id", "repo", "base_commit", "patch", "workload")
OPTIONAL = SWE_BENCH_FIELDS | {
    "rebuild_cmd",
    "test_cmd",
    "covering_tests",
    "speedup",
    "single_thread_tests",
}

# SWE-fficiency's harness runs the workload script once per side (the script repeats its
# own calls with timeit.repeat and prints their Mean:). One reading per side is too few
# against its 0.95 mark: a gold timed against itself passed 1 of 3 rows of
# swefficiency-mini on an idle machine, 3 of 3 with 5 rounds. So its tasks keep the
# evaluation's default rounds (None: not the task's to set).
REPEATS: int | None = None
WARMUP: int | None = None

PROMPT = """\
The repository {repo} is checked out at {workdir}. The workload below is slow: make it
faster by changing the repository's code, keeping its behaviour and the tests passing.

```python
{workload}
```
"""


def swefficiency_task(row: Row, dataset: str, where: Path) -> Task:
    iid = check_fields(row, BENCHMARK, REQUIRED, OPTIONAL)
    covering = as_list(row, "covering_tests", iid, BENCHMARK)
    test_cmd = str(row.get("test_cmd") or "python -m pytest -p no:cacheprovider -q")
    speedup = row.get("speedup")
    return image_task(
        row,
        iid,
        dataset,
        where,
        benchmark=BENCHMARK,
        prompt=PROMPT.format(
            repo=row["repo"], workdir=WORKDIR, workload=str(row["workload"]).rstrip()
        ),
        test_cmd=" ".join([test_cmd, *(shlex.quote(t) for t in covering)]),
        workload_cmd=heredoc_python(str(row["workload"]), "AGENTFLEET_WORKLOAD"),
        test_files=test_paths(covering),
        image=swebench_image(iid),
        env_activate=CONDA_TESTBED,
        rebuild_cmd=str(row.get("rebuild_cmd") or ""),
        workload_parser="mean",
        repeats=REPEATS,
        warmup=WARMUP,
        gold=str(row["patch"]),
        fields={
            "covering_tests": covering,
            "PASS_TO_PASS": as_list(row, "PASS_TO_PASS", iid, BENCHMARK),
            "speedup": float(speedup) if speedup not in (None, "") else None,
        },
    )
