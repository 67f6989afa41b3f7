"""Steadiness: the outlier rule, adaptive repeats (target_ci), the early stop once the
reward is decided, info.timing's round counts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import drifting_noop_samples

from agentfleet.evaluation.config import EvalConfig
from agentfleet.evaluation.evaluator import Evaluator
from agentfleet.evaluation.reward import RewardConfig, compute_reward
from agentfleet.evaluation.rounds import (
    ci_relative_width,
    flat_reward_bounds,
    outlier_rounds,
    reward_decided,
)
from agentfleet.evaluation.schema import EvalRequest
from agentfleet.evaluation.speedup import Samples, speedup_stats
from agentfleet.evaluation.timing import timing_stats
from agentfleet.sandbox import ProcessBackend, SandboxService


def test_a_disturbed_round_is_dropped_and_said() -> None:
    base = [1.00, 1.01, 0.99, 1.00, 1.02, 1.00, 1.01, 1.00]
    cand = [0.50, 0.51, 0.50, 0.49, 0.50, 0.95, 0.50, 0.51]  # round 5: candidate disturbed
    assert outlier_rounds(base, cand) == [5]
    samples = Samples(
        wall_s={"baseline": base, "candidate": cand},
        cpu_s={"baseline": base, "candidate": cand},
        order=[["baseline", "candidate"]] * 8,
    )
    t = timing_stats(samples, EvalConfig(bootstrap_resamples=200))
    assert t.stats["rounds"] == 8 and t.stats["rounds_used"] == 7
    assert t.stats["dropped_rounds"] == [5]
    assert len(t.stats["baseline_s"]) == 7
    assert 1.97 < t.speedup < 2.03
    assert t.stats["within_noise"] is False and t.stats["within_noise_all_rounds"] is False
    off = timing_stats(samples, EvalConfig(bootstrap_resamples=200, drop_outliers=False))
    assert off.stats["dropped_rounds"] == [] and off.stats["rounds_used"] == 8


def test_a_dropped_round_never_turns_noise_into_a_change() -> None:
    """Unchanged code, 5 rounds: four ratios near 1.06, one at 0.80. The rule drops the
    0.80, and the four left alone would call 1.06 a gain; over every round it is noise, and
    noise it stays (no reward)."""
    base = [1.06, 1.07, 1.06, 1.065, 0.80]
    cand = [1.0] * 5
    samples = Samples(
        wall_s={"baseline": base, "candidate": cand},
        cpu_s={"baseline": base, "candidate": cand},
        order=[["baseline", "candidate"]] * 5,
    )
    cfg = EvalConfig(bootstrap_resamples=200)
    t = timing_stats(samples, cfg)
    assert t.stats["dropped_rounds"] == [4] and t.speedup > 1.05
    kept = speedup_stats(base[:4], cand[:4], resamples=200)
    assert kept["within_noise"] is False  # what the kept rounds alone say
    assert t.stats["within_noise"] is True
    assert t.stats["within_noise_all_rounds"] is True
    assert compute_reward(t.speedup, correct=True, within_noise=t.stats["within_noise"]) == 0.0
    steady = timing_stats(samples, cfg.model_copy(update={"drop_outliers": False}))
    assert steady.stats["within_noise_all_rounds"] is None  # nothing dropped


def test_every_speedup_in_the_timing_pairs_the_rounds() -> None:
    """A host whose speed drifts between rounds (levels 1.0, 1.3, 1.1, 0.9, 1.2), unchanged
    code in the candidate and in the reference: the speedup, both clocks' figures and the
    reference's read the rounds' ratios (1.01), not the ratio of the medians (1.08, set by
    the middle round's noise alone)."""
    base, same = drifting_noop_samples()
    arms = {"baseline": base, "candidate": same, "reference": same}
    samples = Samples(wall_s=dict(arms), cpu_s=dict(arms), order=[list(arms)] * 5)
    t = timing_stats(samples, EvalConfig(bootstrap_resamples=200, drop_outliers=False))
    for got in (t.speedup, t.stats["cpu_speedup"], t.stats["wall_speedup"]):
        assert got == pytest.approx(1.01)
    assert t.reference_speedup == pytest.approx(1.01)


def test_the_rule_needs_five_rounds_and_drops_at_most_a_fifth() -> None:
    assert outlier_rounds([1.0, 1.0, 1.0, 5.0], [1.0, 1.0, 1.0, 1.0]) == []
    base = [1.0] * 10
    cand = [1.0] * 6 + [3.0, 4.0, 5.0, 6.0]  # four far off: at most two dropped
    dropped = outlier_rounds(base, cand)
    assert len(dropped) <= 2
    steady = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98]
    assert outlier_rounds(steady, list(reversed(steady))) == []


def test_ci_width_shrinks_with_rounds() -> None:
    noisy_b = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.1, 0.9, 1.05, 0.95] * 2
    noisy_c = [1.0, 0.9, 1.1, 0.95, 1.05, 1.0, 0.9, 1.1, 0.95, 1.05] * 2
    w5 = ci_relative_width(noisy_b[:5], noisy_c[:5], resamples=300, seed=0)
    w20 = ci_relative_width(noisy_b, noisy_c, resamples=300, seed=0)
    assert w20 < w5


def _decided(base: list[float], cand: list[float], reward: RewardConfig) -> bool:
    return reward_decided(base, cand, reward, noise_threshold=0.05, resamples=300, seed=0)


def test_the_reward_is_decided_only_where_it_is_flat() -> None:
    log = RewardConfig()  # log_speedup, full reward from 2x
    assert flat_reward_bounds(log) == (1.0, 2.0)
    base = [1.0, 1.02, 0.98]
    assert _decided(base, [0.25, 0.26, 0.24], log)  # 4x: reward 1 whatever the noise
    assert _decided(base, [1.5, 1.6, 1.55], log)  # slower: reward 0
    assert not _decided(base, [1.0, 0.99, 1.01], log)  # a tie: the noise gate decides
    assert not _decided(base, [0.7, 0.69, 0.71], log)  # 1.4x: the reward grows with it
    assert not _decided(base, [0.49, 0.5, 0.51], log)  # 2x: the interval crosses the edge
    assert not _decided(base, [0.25, 0.9, 0.24], log)  # one round disagrees
    binary = RewardConfig(kind="binary", threshold=1.2)
    assert _decided(base, [0.5, 0.5, 0.5], binary)
    assert not _decided(base, [0.85, 0.84, 0.86], binary)
    relative = RewardConfig(kind="relative")  # depends on the reference: never decided
    assert flat_reward_bounds(relative) is None
    assert not _decided(base, [0.1, 0.1, 0.1], relative)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[SandboxService]:
    async with SandboxService(ProcessBackend(root=tmp_path / "sb")) as svc:
        yield svc


async def test_target_ci_adds_rounds_until_narrow_or_capped(service: SandboxService) -> None:
    req = EvalRequest(
        exit_status="Submitted", result="", instance_id="byte-stats", dataset_name="perf-lite"
    )
    # an unreachable target: rounds grow from 3 to the cap (2 at a time)
    ev = Evaluator(
        service, EvalConfig(repeats=3, target_ci=1e-6, max_repeats=6, bootstrap_resamples=100)
    )
    info = (await ev.evaluate(req)).info
    assert info["status"] == "ok", info
    t = info["timing"]
    assert (t["repeats"], t["rounds"], t["target_ci"]) == (3, 6, 1e-6)
    assert len(t["order"]) == 6
    # a target any interval meets: no round added
    ev = Evaluator(
        service, EvalConfig(repeats=3, target_ci=0.99, max_repeats=6, bootstrap_resamples=100)
    )
    t = (await ev.evaluate(req)).info["timing"]
    assert t["rounds"] == 3 and t["rounds_used"] == 3
    assert t["ci_relative_width"] < 0.99


def test_serve_eval_target_ci_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from agentfleet.cli import app as cli_app

    seen: dict[str, object] = {}
    monkeypatch.setattr("agentfleet.evaluation.server.run_server", lambda **kw: seen.update(kw))
    runner = CliRunner()
    out = runner.invoke(cli_app, ["serve-eval", "--target-ci", "0.03", "--max-repeats", "30"])
    assert out.exit_code == 0, out.output
    cfg = seen["eval_config"]
    assert isinstance(cfg, EvalConfig) and (cfg.target_ci, cfg.max_repeats) == (0.03, 30)
    assert runner.invoke(cli_app, ["serve-eval", "--target-ci", "2"]).exit_code == 2


def test_alternate_order_moves_every_arm_through_every_position() -> None:
    """Two arms alternate as before; with three (baseline, candidate, reference) six rounds
    put each arm in each position twice, and the candidate is not always in the middle."""
    from collections import Counter

    from agentfleet.evaluation.speedup import alternate_order

    assert [alternate_order(["b", "c"], r) for r in range(4)] == [["b", "c"], ["c", "b"]] * 2
    rounds = [alternate_order(["b", "c", "r"], r) for r in range(6)]
    assert all(sorted(o) == ["b", "c", "r"] for o in rounds)
    for arm in "bcr":
        assert Counter(o.index(arm) for o in rounds) == {0: 2, 1: 2, 2: 2}, (arm, rounds)
    assert [o.index("c") for o in rounds[:5]] != [1] * 5  # GSO's 5 rounds
