"""Evaluating real-benchmark tasks end to end on real sandboxes (process backend): the
gold patch meets each benchmark's rule, a no-op does not, and a build-breaking, a
test-editing and an output-changing patch each score 0 with their status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from realbench import PERF_TEST, build_dataset, dataset_service

from agentfleet.evaluation.evaluator import EvalConfig, Evaluator
from agentfleet.evaluation.pass_rules import GSO_GOLD_RATIO, SWEF_MATCH
from agentfleet.evaluation.schema import EvalRequest, EvalResult
from agentfleet.sandbox import CreateSandbox, SandboxInfo, SandboxService

CONFIG = EvalConfig(repeats=5, bootstrap_resamples=200)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return build_dataset(tmp_path_factory.mktemp("realbench"))


@pytest.fixture
async def service(tmp_path: Path, dataset: dict[str, str]) -> AsyncIterator[SandboxService]:
    async with dataset_service(tmp_path, dataset) as svc:
        yield svc


async def _evaluate(
    service: SandboxService,
    dataset: dict[str, str],
    task: str,
    patch: str,
    config: EvalConfig = CONFIG,
) -> EvalResult:
    req = EvalRequest(
        exit_status="Submitted", result=patch, instance_id=task, dataset_name=dataset["path"]
    )
    evaluator = Evaluator(service, config, dataset_roots=[dataset["path"]])
    return await evaluator.evaluate(req)


@pytest.mark.parametrize("task", ["gso-count", "swef-count", "perf-count"])
async def test_gold_patch_meets_the_benchmark_rule(
    service: SandboxService, dataset: dict[str, str], task: str
) -> None:
    """The gold as the candidate. Its speedup over the base is large, so the parts of each
    rule that compare with the base must pass. The parts that compare it with the gold
    (GSO's > 0.95, SWE-fficiency's >= 0.95) compare the gold with itself: the same files,
    so it is timed once and stands for the gold (a tie timed twice fell on either side of
    the mark with the machine's noise); each rule is met."""
    res = await _evaluate(service, dataset, task, dataset["gold"])
    info = res.info
    assert info["status"] == "ok", info
    verdict = info["benchmark"]
    assert "reference_error" not in info, info
    assert info["reference_is_candidate"] is True, info
    # the count rows' gold is about 1.5x; GSO's own base mark (1.2) is the bound under load
    assert verdict["speedup_base"] > 1.2 and res.speedup == verdict["speedup_base"]
    assert res.reward > 0
    if task == "gso-count":
        assert verdict["tests"] == ["t0", "t1"] and verdict["opt_base"] is True
        assert verdict["hm_speedup_gold"] == pytest.approx(1.0), verdict
        assert GSO_GOLD_RATIO < 1.0
        assert verdict["passed"] is True, verdict
    if task == "swef-count":
        assert verdict["gold_speedup_source"] == "measured"
        assert verdict["speedup_ratio"] == pytest.approx(1.0), verdict
        assert SWEF_MATCH <= 1.0
        assert verdict["passed"] is True, verdict
    if task == "perf-count":
        assert verdict["passed"] is True, verdict
        assert verdict["tests"] == [PERF_TEST]
        assert verdict["gain"] > 0 and verdict["per_test_p"][PERF_TEST] < 0.1


async def test_noop_patch_fails_the_rule(service: SandboxService, dataset: dict[str, str]) -> None:
    # GSO's rule compares per-test *means*: at 5 rounds one disturbed round moved a no-op
    # to 1.2x once, with the whole suite running on 2 cores; at 9 it weighs 5/9 as much
    config = CONFIG.model_copy(update={"repeats": 9})
    res = await _evaluate(service, dataset, "gso-count", dataset["empty"], config)
    assert res.info["status"] == "ok"
    verdict = res.info["benchmark"]
    assert verdict["passed"] is False and verdict["opt_base"] is False, verdict
    assert verdict["gm_speedup_base"] < 1.2


@pytest.mark.parametrize(
    ("patch", "status", "key"),
    [
        ("broken", "build_failed", "build_output"),
        ("cheat", "tests_modified", "modified_tests"),
        ("wrong", "wrong_output", "candidate_output_head"),
    ],
)
async def test_bad_patches_score_zero_with_their_status(
    service: SandboxService, dataset: dict[str, str], patch: str, status: str, key: str
) -> None:
    res = await _evaluate(service, dataset, "swef-count", dataset[patch])
    info = res.info
    assert (res.reward, res.speedup, info["status"]) == (0.0, 0.0, status), info
    assert info[key]
    verdict = info["benchmark"]
    assert verdict["passed"] is False and verdict["failed_status"] == status
    # SWE-fficiency: a failing patch counts as speedup 1, over the recorded gold's 2.0
    assert verdict["speedup_ratio"] == 0.5
    if status == "tests_modified":
        assert info["modified_tests"] == ["tests/check.sh"]


async def test_memory_limit_per_benchmark(service: SandboxService, dataset: dict[str, str]) -> None:
    """EvalConfig.memory_mb: the evaluation sandboxes of that benchmark's tasks ask for it."""
    asked: list[int | None] = []

    class Recording:
        def __getattr__(self, name: str) -> object:
            return getattr(service, name)

        async def create(self, req: CreateSandbox) -> SandboxInfo:
            asked.append(req.memory_mb)
            return await service.create(req.model_copy(update={"memory_mb": None}))

    cfg = CONFIG.model_copy(update={"memory_mb": {"gso": 2048}, "repeats": 1})
    for task in ("gso-count", "swef-count"):
        req = EvalRequest(
            exit_status="Submitted", result="", instance_id=task, dataset_name=dataset["path"]
        )
        await Evaluator(Recording(), cfg, dataset_roots=[dataset["path"]]).evaluate(req)  # type: ignore[arg-type]
    assert asked == [2048] * 3 + [None] * 3


def test_serve_eval_eval_memory_sets_the_memory_by_benchmark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`serve-eval --eval-memory BENCH=SIZE` (repeatable) is EvalConfig.memory_mb; an unknown
    benchmark, a bad size or 0 is exit 2 naming the option, before anything starts."""
    from typer.testing import CliRunner

    from agentfleet.cli import app as cli_app

    seen: dict[str, object] = {}
    monkeypatch.setattr("agentfleet.evaluation.server.run_server", lambda **kw: seen.update(kw))
    runner = CliRunner()
    args = ["serve-eval", "--eval-memory", "swe-perf=16g", "--eval-memory", "gso=1536m"]
    out = runner.invoke(cli_app, args)
    assert out.exit_code == 0, out.output
    cfg = seen["eval_config"]
    assert isinstance(cfg, EvalConfig) and cfg.memory_mb == {"swe-perf": 16384, "gso": 1536}
    for bad, needle in [
        ("perf-lite=1g", "BENCH one of gso, swe-perf, swefficiency"),
        ("swe-perf", "expected BENCH=SIZE"),
        ("gso=lots", "expected a size like 512m or 2g"),
        ("gso=0", "a size, not 0"),
        ("gso=0g", "a size, not 0"),
        ("gso=0.0", "a size, not 0"),
        ("gso=1m", "--eval-memory gso '1m': at least 6m"),
        ("gso=1g,gso=2g", "'gso=2g': gso given twice"),
    ]:
        seen.clear()
        values = [a for v in bad.split(",") for a in ("--eval-memory", v)]
        res = runner.invoke(cli_app, ["serve-eval", *values])
        said = " ".join(res.output.split())
        assert res.exit_code == 2 and needle in said and "no limit" not in said, res.output
        assert not seen
