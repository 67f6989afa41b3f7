"""Workload parsers, the Mann-Whitney U test and the real benchmarks' pass rules (pure)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from agentfleet.evaluation.mannwhitney import iqr_filter, mann_whitney_u
from agentfleet.evaluation.pass_rules import (
    benchmark_verdict,
    failed_verdict,
    gso_verdict,
    swefficiency_verdict,
    sweperf_gain,
    sweperf_verdict,
)
from agentfleet.evaluation.workload_parsers import (
    PARSERS,
    WorkloadParseError,
    parse_workload_output,
)

# ------------------------------------------------------------------ parsers


def test_wall_parser_is_the_process_time() -> None:
    assert parse_workload_output("wall", "anything", wall_s=0.25).times == {"wall": 0.25}


def test_gso_parser_reads_each_execution_time_line() -> None:
    out = "setup...\nExecution time: 0.123456s\nnoise\nExecution time: 1.5s\n"
    assert parse_workload_output("gso", out, wall_s=9).times == {"t0": 0.123456, "t1": 1.5}


def test_pytest_parser_reads_call_durations_of_named_tests() -> None:
    out = """
============================= slowest durations =============================
0.52s call     tests/test_a.py::test_slow
0.10s setup    tests/test_a.py::test_slow
0.01s call     tests/test_a.py::test_fast[1-2]
0.00s teardown tests/test_a.py::test_fast[1-2]
========================= 2 passed in 0.70s ==========================
"""
    got = parse_workload_output("pytest", out, wall_s=1)
    assert got.times == {
        "tests/test_a.py::test_slow": 0.52,
        "tests/test_a.py::test_fast[1-2]": 0.01,
    }
    only = parse_workload_output("pytest", out, wall_s=1, names=["tests/test_a.py::test_slow"])
    assert only.times == {"tests/test_a.py::test_slow": 0.52}
    with pytest.raises(WorkloadParseError, match=r"no duration for tests/x\.py::t"):
        parse_workload_output("pytest", out, wall_s=1, names=["tests/x.py::t"])


def test_mean_parser_reads_mean_and_std() -> None:
    out = "warming up\nMean: 0.0123\nStd Dev: 0.0004\n"
    got = parse_workload_output("mean", out, wall_s=1)
    assert got.times == {"mean": 0.0123} and got.extra == {"std": 0.0004}


@pytest.mark.parametrize(
    ("parser", "output", "message"),
    [
        ("gso", "Traceback (most recent call last):\nboom", "no 'Execution time: X' line"),
        ("gso", "Execution time: -1s", "not a time"),
        ("gso", "Execution time: nan", "not a time"),
        ("pytest", "1 passed", "no test durations"),
        ("mean", "Mean: inf\n", "not a time"),
        ("mean", "", "no 'Mean: X' line"),
        ("nope", "", "unknown workload parser"),
    ],
)
def test_parsers_give_a_clear_error_on_junk(parser: str, output: str, message: str) -> None:
    with pytest.raises(WorkloadParseError, match=message):
        parse_workload_output(parser, output, wall_s=1.0)


@settings(max_examples=200, deadline=None)
@given(parser=st.sampled_from(PARSERS), output=st.text(max_size=400))
def test_parsers_never_crash_on_any_text(parser: str, output: str) -> None:
    try:
        got = parse_workload_output(parser, output, wall_s=0.5)
    except WorkloadParseError:
        return
    assert got.times and all(math.isfinite(v) and v >= 0 for v in got.times.values())


# ------------------------------------------------------------------ Mann-Whitney U


def test_mann_whitney_matches_scipy_known_values() -> None:
    # scipy.stats.mannwhitneyu's documented example, method="asymptotic":
    # statistic 17.0, p-value 0.11134688653314041 (two-sided)
    males = [19, 22, 16, 29, 24]
    females = [20, 11, 17, 12]
    r = mann_whitney_u(males, females)
    assert r.u == 17.0
    assert r.p == pytest.approx(0.11134688653314041, rel=1e-9)
    # one-sided: half of it, the other direction its complement (up to continuity)
    assert mann_whitney_u(males, females, "greater").p == pytest.approx(r.p / 2, rel=1e-9)
    assert mann_whitney_u(males, females, "less").p > 0.9


def test_mann_whitney_tie_correction() -> None:
    # by hand: x=[1,2,2], y=[2,3,4]: the three 2s share rank 3 (ranks 1,3,3 | 3,5,6);
    # U1 = 7 - 6 = 1; var = 9/12 * (7 - (27-3)/30) = 4.65; z = (|1-4.5| - .5)/sqrt(4.65)
    r = mann_whitney_u([1, 2, 2], [2, 3, 4])
    z = (3.5 - 0.5) / math.sqrt(4.65)
    assert r.u == 1.0
    assert r.p == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-12)
    assert mann_whitney_u([1, 1], [1, 1, 1]).p == 1.0  # everything tied


def test_mann_whitney_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        mann_whitney_u([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        mann_whitney_u([float("nan")], [1.0])


samples = st.lists(st.floats(0.001, 10.0, allow_nan=False), min_size=1, max_size=25)


@settings(max_examples=200, deadline=None)
@given(x=samples, y=samples)
def test_mann_whitney_properties(x: list[float], y: list[float]) -> None:
    r = mann_whitney_u(x, y)
    assert 0.0 <= r.p <= 1.0
    assert r.u + mann_whitney_u(y, x).u == pytest.approx(len(x) * len(y))
    assert mann_whitney_u(y, x).p == pytest.approx(r.p)
    assert mann_whitney_u(x, y, "greater").p == pytest.approx(mann_whitney_u(y, x, "less").p)


def test_iqr_filter_drops_far_values() -> None:
    assert iqr_filter([1.0, 1.1, 0.9, 1.05, 0.95, 9.0]) == [1.0, 1.1, 0.9, 1.05, 0.95]
    assert iqr_filter([1.0, 50.0]) == [1.0, 50.0]  # too few to judge


# ------------------------------------------------------------------ pass rules


def arm(**metrics: float) -> dict[str, list[float]]:
    """Five rounds per metric around the given seconds (+-1%)."""
    return {k: [v * f for f in (0.99, 1.0, 1.01, 1.0, 0.995)] for k, v in metrics.items()}


def test_gso_opt1_needs_speedup_over_base_and_to_match_gold() -> None:
    base, gold = arm(t0=1.0, t1=2.0), arm(t0=0.5, t1=1.0)
    good = gso_verdict(base, arm(t0=0.5, t1=1.0), gold)
    assert good["passed"] is True and good["gm_speedup_base"] == pytest.approx(2.0, rel=0.02)
    assert good["hm_speedup_gold"] == pytest.approx(1.0, rel=0.02)
    noop = gso_verdict(base, base, gold)
    assert noop["passed"] is False and noop["opt_base"] is False
    # 1.5x over base but well short of the gold (2x): not Opt@1
    short = gso_verdict(base, arm(t0=0.67, t1=1.33), gold)
    assert short["opt_base"] is True and short["passed"] is False
    # the harmonic mean punishes one test slower than the gold
    mixed = gso_verdict(base, arm(t0=0.25, t1=2.0), gold)  # gm 2x over base, as the gold
    assert mixed["opt_base"] is True and mixed["gm_speedup_base"] == pytest.approx(2.0, rel=0.02)
    assert mixed["hm_speedup_gold"] == pytest.approx(0.8, rel=0.02) and mixed["passed"] is False
    assert gso_verdict(base, gold, None)["passed"] is None


def test_swefficiency_ratio_to_gold() -> None:
    base, gold = arm(mean=1.0), arm(mean=0.5)
    v = swefficiency_verdict(base, arm(mean=0.5), gold)
    assert v["speedup_ratio"] == pytest.approx(1.0, rel=1e-6) and v["passed"] is True
    v = swefficiency_verdict(base, base, gold)
    assert v["speedup_ratio"] == pytest.approx(0.5, rel=1e-6) and v["passed"] is False
    recorded = swefficiency_verdict(base, arm(mean=0.5), None, gold_speedup=4.0)
    assert recorded["speedup_ratio"] == pytest.approx(0.5)
    assert recorded["gold_speedup_source"] == "recorded"
    failed = failed_verdict("swefficiency", "tests_failed", gold_speedup=2.0)
    assert failed["speedup_ratio"] == 0.5 and failed["passed"] is False


def test_sweperf_significant_gain() -> None:
    base = [1.0 + 0.01 * i for i in range(20)]
    faster = [0.7 + 0.01 * i for i in range(20)]
    assert sweperf_gain(base, base) == 0.0
    gain = sweperf_gain(base, faster)
    assert 0.1 < gain < 0.35  # about 27% faster, less what significance needs
    v = sweperf_verdict({"t::a": base}, {"t::a": faster})
    assert v["passed"] is True and v["per_test_p"]["t::a"] < 0.1
    assert sweperf_verdict({"t::a": base}, {"t::a": list(base)})["passed"] is False


def test_benchmark_verdict_dispatch_and_errors() -> None:
    s = {"baseline": arm(t0=1.0), "candidate": arm(t0=0.5), "gold": arm(t0=0.5)}
    assert benchmark_verdict("gso", s)["passed"] is True
    with pytest.raises(ValueError, match="unknown benchmark"):
        benchmark_verdict("swe-bench", s)
    with pytest.raises(ValueError, match="different metrics"):
        benchmark_verdict("gso", {"baseline": arm(t0=1.0), "candidate": arm(t1=1.0)})


def test_the_benchmark_clock_decides_within_noise() -> None:
    """The reward's noise gate reads the clock the speedup was read on: a candidate clearly
    twice as fast by the benchmark's own times is not "within noise" because the
    whole-process clock (Python start-up and all) was noisy, and a tie on it is."""
    from agentfleet.evaluation import image_eval
    from agentfleet.evaluation.config import EvalConfig
    from agentfleet.evaluation.speedup import Samples
    from agentfleet.tasks import load_dataset

    ds = load_dataset("swe-perf-mini")
    task = ds.tasks()[0]
    names = image_eval._names(task)
    base_s, fast_s = [0.28, 0.29, 0.27, 0.28, 0.3], [0.14, 0.15, 0.14, 0.13, 0.14]
    noisy_wall = [1.0, 1.4, 0.8, 1.2, 0.9]

    def run(cand_s: list[float]) -> dict[str, Any]:
        samples = Samples(
            wall_s={"baseline": noisy_wall, "candidate": noisy_wall[::-1]},
            metrics={
                "baseline": [{n: t for n in names} for t in base_s],
                "candidate": [{n: t for n in names} for t in cand_s],
            },
        )
        stats: dict[str, Any] = {"dropped_rounds": [], "within_noise": True}
        info: dict[str, Any] = {"within_noise": True}
        speedup = image_eval.apply_verdict(task, samples, stats, info, 1.0, EvalConfig())
        return {"speedup": speedup, **info}

    fast = run(fast_s)
    assert fast["within_noise"] is False and fast["speedup"] == pytest.approx(2.0, rel=0.05)
    tie = run(list(base_s))
    assert tie["within_noise"] is True


def test_a_dropped_round_never_turns_noise_into_a_change_on_the_benchmark_clock() -> None:
    """As on the process clock (test_eval_rounds): four rounds at 1.06x and one at 0.80x,
    the last dropped. The benchmark's own times over the kept rounds call 1.06x a change;
    over every round it is noise, and noise it stays."""
    from agentfleet.evaluation import image_eval
    from agentfleet.evaluation.config import EvalConfig
    from agentfleet.evaluation.speedup import Samples, speedup_stats
    from agentfleet.tasks import load_dataset

    task = load_dataset("swe-perf-mini").tasks()[0]
    names = image_eval._names(task)
    base_s, cand_s = [0.318, 0.321, 0.318, 0.3195, 0.24], [0.3] * 5
    assert speedup_stats(base_s[:4], cand_s[:4], resamples=200)["within_noise"] is False
    samples = Samples(
        wall_s={"baseline": [1.0] * 5, "candidate": [1.0] * 5},
        metrics={
            "baseline": [{n: t for n in names} for t in base_s],
            "candidate": [{n: t for n in names} for t in cand_s],
        },
    )
    stats: dict[str, Any] = {"dropped_rounds": [4], "within_noise": False}
    info: dict[str, Any] = {}
    cfg = EvalConfig(bootstrap_resamples=200)
    image_eval.apply_verdict(task, samples, stats, info, 1.0, cfg)
    assert info["within_noise"] is True and stats["within_noise"] is True
    assert stats["within_noise_all_rounds"] is True
