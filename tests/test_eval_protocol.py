"""Each benchmark's own timing protocol as a task's default (real sandboxes, process
backend): a task naming SWE-Perf's 20 runs and 3 warm-ups (the numbers its profile
gives its rows; a folder task may name them too) is timed that way when the operator set
no repeats; an explicit repeats wins. Rounds are read from ``info.timing``; warm-ups from
the workload runs each sandbox saw (the output check + warm-ups + timed rounds)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from realbench import WorkloadRuns, build_dataset, dataset_service

from agentfleet.evaluation.evaluator import EvalConfig, Evaluator
from agentfleet.evaluation.schema import EvalRequest, EvalResult
from agentfleet.sandbox import SandboxService
from agentfleet.tasks.profiles import sweperf
from agentfleet.tasks.task import load_dataset

TASK = "perf-count"  # SWE-Perf's rule, pytest durations, a C program rebuilt by gcc
REPEATS = 6  # SWE-Perf's 20 cost minutes here; the profile's numbers: test_real_datasets


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    data = build_dataset(tmp_path_factory.mktemp("protocol"))
    task_yaml = Path(data["path"]) / TASK / "task.yaml"
    with task_yaml.open("a") as f:  # the folder format carries a protocol: SWE-Perf's
        f.write(f"repeats: {REPEATS}\nwarmup: {sweperf.WARMUP}\n")  # warm-ups, fewer runs
    return data


@pytest.fixture
async def service(tmp_path: Path, dataset: dict[str, str]) -> AsyncIterator[SandboxService]:
    async with dataset_service(tmp_path, dataset) as svc:
        yield svc


async def _evaluate(
    service: SandboxService, dataset: dict[str, str], config: EvalConfig
) -> tuple[EvalResult, list[int]]:
    task = await asyncio.to_thread(lambda: load_dataset(dataset["path"]).task(TASK))
    counting = WorkloadRuns(service, task.workload_cmd)
    req = EvalRequest(
        exit_status="Submitted",
        result=dataset["gold"],
        instance_id=TASK,
        dataset_name=dataset["path"],
    )
    evaluator = Evaluator(counting, config, dataset_roots=[dataset["path"]])  # type: ignore[arg-type]
    res = await evaluator.evaluate(req)
    return res, sorted(counting.runs.values())


async def test_the_task_protocol_is_the_default(
    service: SandboxService, dataset: dict[str, str]
) -> None:
    assert (sweperf.REPEATS, sweperf.WARMUP) == (20, 3)
    res, runs = await _evaluate(service, dataset, EvalConfig(bootstrap_resamples=200))
    assert res.info["status"] == "ok", res.info
    timing = res.info["timing"]
    assert (timing["repeats"], timing["warmup"], timing["rounds"]) == (REPEATS, 3, REPEATS)
    assert timing["protocol"] == {"repeats": "task", "warmup": "task"}
    assert len(timing["baseline_wall_s"]) + len(timing["dropped_rounds"]) == REPEATS
    # base and candidate (the gold itself, whose rounds stand for the gold's): each ran the
    # workload 3 times untimed (the output check and 2 warm-up rounds), then REPEATS timed
    assert res.info["reference_is_candidate"] is True
    assert runs == [REPEATS + 3] * 2, runs
    assert res.info["benchmark"]["passed"] is True, res.info["benchmark"]


async def test_an_explicit_repeats_wins(service: SandboxService, dataset: dict[str, str]) -> None:
    res, runs = await _evaluate(
        service, dataset, EvalConfig(repeats=2, warmup=1, bootstrap_resamples=200)
    )
    assert res.info["status"] == "ok", res.info
    timing = res.info["timing"]
    assert (timing["repeats"], timing["warmup"], timing["rounds"]) == (2, 1, 2)
    assert timing["protocol"] == {"repeats": "operator", "warmup": "operator"}
    assert runs == [3, 3], runs  # the output check, then 2 timed rounds
    # the server's cap: a task's own repeats never go past max_repeats
    res, runs = await _evaluate(
        service, dataset, EvalConfig(max_repeats=4, bootstrap_resamples=200)
    )
    assert res.info["timing"]["rounds"] == 4 and runs == [7, 7], runs
