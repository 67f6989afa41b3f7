"""Real-benchmark evaluation against the real Docker engine, on the bundled gso-mini and
swefficiency-mini rows (each in its own image, C code rebuilt by ``make`` after a patch):
the gold beats the base by the benchmark's measure, a no-op does not, and a patch that
breaks the build, edits the protected tests or changes the results scores 0 with its
status. No container is left behind (the service checks)."""

from __future__ import annotations

import difflib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import docker_available, require_tool

from agentfleet.evaluation.evaluator import EvalConfig, Evaluator
from agentfleet.evaluation.schema import EvalRequest, EvalResult
from agentfleet.sandbox import SandboxService
from agentfleet.sandbox.docker import DockerBackend
from agentfleet.tasks.task import Task, load_dataset

CPRIMES = ("gso-mini", "agentfleet__cprimes-102", "src/primes.c")
CDUPES = ("swefficiency-mini", "agentfleet__cdupes-301", "src/dupes.c")
CONFIG = EvalConfig(repeats=3, bootstrap_resamples=200)  # 5 cost 50 s in make test


def _image_file(task: Task, path: str) -> str:
    assert task.image and task.workdir
    out = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", task.image, "cat", f"{task.workdir}/{path}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout


def _diff(path: str, old: str, new: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(True), new.splitlines(True), f"a/{path}", f"b/{path}"
    )
    return f"diff --git a/{path} b/{path}\n" + "".join(lines)


@pytest.fixture(scope="module")
def tasks() -> dict[str, Task]:
    problem = None if docker_available() else "no Docker engine"
    require_tool("docker", "image tasks run in their own images", problem=problem)
    from agentfleet.sandbox.task_images import build_task_image

    out = {}
    for dataset, iid, _ in (CPRIMES, CDUPES):
        task = load_dataset(dataset).task(iid)
        assert task.image
        build_task_image(task, task.image, log=lambda *_: None)  # no-op when up to date
        out[iid] = task
    return out


@pytest.fixture
async def service(tmp_path: Path, tasks: dict[str, Task]) -> AsyncIterator[SandboxService]:
    async with SandboxService(DockerBackend(root=tmp_path / "sb"), reap_period_s=0) as svc:
        yield svc
        assert len(svc) == 0, "a sandbox was left behind"


async def _evaluate(svc: SandboxService, dataset: str, iid: str, patch: str) -> EvalResult:
    req = EvalRequest(exit_status="Submitted", result=patch, instance_id=iid, dataset_name=dataset)
    return await Evaluator(svc, CONFIG).evaluate(req)


async def test_gso_gold_beats_base_and_noop_does_not(
    service: SandboxService, tasks: dict[str, Task]
) -> None:
    dataset, iid, _ = CPRIMES
    gold = await _evaluate(service, dataset, iid, tasks[iid].solution_patch)
    info = gold.info
    assert info["status"] == "ok", info
    assert info.get("durations", {}).get("rebuild") is not None  # make ran after the patch
    verdict = info["benchmark"]
    assert verdict["opt_base"] is True and verdict["gm_speedup_base"] > 1.2, verdict
    assert set(verdict["samples_s"]) == {"baseline", "candidate", "gold"}
    noop = await _evaluate(service, dataset, iid, "")
    assert noop.info["status"] == "ok", noop.info
    assert noop.info["benchmark"]["passed"] is False
    # GSO's clock is the scripts' wall time: on a loaded machine a no-op has read 1.27x over
    # base; what must hold is that it is far from the gold's, so the rule's gold half fails it
    assert noop.info["benchmark"]["gm_speedup_base"] < verdict["gm_speedup_base"] / 2


async def test_gso_bad_patches_score_zero(service: SandboxService, tasks: dict[str, Task]) -> None:
    dataset, iid, path = CPRIMES
    src = _image_file(tasks[iid], path)
    broken = _diff(path, src, src.replace("return 1;", "return 1"))
    res = await _evaluate(service, dataset, iid, broken)
    assert (res.reward, res.info["status"]) == (0.0, "build_failed"), res.info
    assert "error" in res.info["build_output"]
    wrong = _diff(path, src, src.replace("return count;", "return count + 1;"))
    res = await _evaluate(service, dataset, iid, wrong)
    assert (res.reward, res.info["status"]) == (0.0, "wrong_output"), res.info
    assert "eqcheck" in res.info["eqcheck_output"]
    assert res.info["benchmark"]["passed"] is False


async def test_swefficiency_bad_patches_score_zero(
    service: SandboxService, tasks: dict[str, Task]
) -> None:
    dataset, iid, path = CDUPES
    src = _image_file(tasks[iid], path)
    tests = _image_file(tasks[iid], "tests/test_dupes.py")
    cheat = _diff(path, src, src.replace("dupes++;", "dupes += 2;")) + _diff(
        "tests/test_dupes.py", tests, tests.replace("assert", "assert True or")
    )
    res = await _evaluate(service, dataset, iid, cheat)
    assert (res.reward, res.info["status"]) == (0.0, "tests_modified"), res.info
    assert res.info["modified_tests"] == ["tests/test_dupes.py"]
    broken = _diff(path, src, src.replace("return dupes;", "return dupes"))
    res = await _evaluate(service, dataset, iid, broken)
    assert (res.reward, res.info["status"]) == (0.0, "build_failed"), res.info
    verdict = res.info["benchmark"]
    # a failing patch counts as speedup 1; the ratio needs a gold speedup (this row has
    # none recorded, and a failed evaluation times no gold)
    assert verdict["passed"] is False and verdict["speedup_base"] == 1.0
