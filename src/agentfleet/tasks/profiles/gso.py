"""GSO (gso-bench/gso): a row -> an image task.

Row: ``instance_id, repo, base_commit, opt_commit, gt_diff, prob_script, tests,
install_commands, api, hints_text`` (and a few of the dataset's other columns). The image
is ``slimshetty/gso:gso.eval.<arch>.<id lowercased>``, the repository's venv at
``/testbed/.venv``. The workload runs every script of ``tests`` (each prints
``Execution time:``); ``install_commands`` rebuild after a patch. GSO has no unit tests:
correctness is its equivalence check (``--reference`` / ``--eqcheck``), the scorer's part.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Final

from agentfleet.tasks.model import Task
from agentfleet.tasks.profiles.common import (
    WORKDIR,
    Row,
    as_list,
    check_fields,
    heredoc_python,
    image_task,
)

BENCHMARK: Final = "gso"
REQUIRED = ("instance_id", "repo", "base_commit", "opt_commit", "gt_diff", "prob_script", "tests")
OPTIONAL = (
    "install_commands",
    "setup_commands",
    "api",
    "hints_text",
    "created_at",
    "gt_commit_message",
    "arch",
    "instance_image_tag",
    "image_name",
    "docker_image",
)
VENV = "source /testbed/.venv/bin/activate"
# GSO's timing: each test 5 runs, no warm-up (here: the output check, untimed, comes first)
REPEATS, WARMUP = 5, 1
_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}

PROMPT = """\
The repository {repo} is checked out at {workdir}. The performance test below exercises
{api_line}and is slow. Make it run faster by changing the repository's code (not the test),
keeping its results exactly the same.

```python
{prob_script}
```
"""


def gso_image(iid: str, arch: str | None = None) -> str:
    """GSO's naming rule: ``slimshetty/gso:gso.eval.<arch>.<id lowercased>``."""
    arch = arch or _ARCH.get(platform.machine().lower(), platform.machine().lower())
    return f"slimshetty/gso:gso.eval.{arch}.{iid.lower()}"


def gso_task(row: Row, dataset: str, where: Path) -> Task:
    iid = check_fields(row, BENCHMARK, REQUIRED, OPTIONAL)
    tests = as_list(row, "tests", iid, BENCHMARK)
    install = as_list(row, "install_commands", iid, BENCHMARK)
    api = str(row.get("api") or "")
    workload = "\n".join(
        heredoc_python(script, f"AGENTFLEET_GSO_TEST_{i}") for i, script in enumerate(tests)
    )
    return image_task(
        row,
        iid,
        dataset,
        where,
        benchmark=BENCHMARK,
        title=f"{row['repo']}: {api}" if api else str(row["repo"]),
        prompt=PROMPT.format(
            repo=row["repo"],
            workdir=WORKDIR,
            api_line=f"`{api}` " if api else "",
            prob_script=str(row["prob_script"]).rstrip(),
        ),
        test_cmd="true",  # GSO's correctness: the tests' own equivalence check
        workload_cmd=workload,
        image=gso_image(iid, _ARCH.get(str(row.get("arch") or ""))),
        env_activate=VENV,
        rebuild_cmd="\n".join(install),
        workload_parser="gso",
        repeats=REPEATS,
        warmup=WARMUP,
        gold=str(row["gt_diff"]),
        fields={
            "opt_commit": row["opt_commit"],
            "tests": tests,
            "api": api,
            "hints_text": row.get("hints_text") or "",
        },
    )
