"""Each real benchmark's own verdict on a patch, from the timed samples of three arms.

The samples: per arm (``baseline``, ``candidate``, ``gold``) and per metric (a workload
parser's names: ``t0``..., a pytest node id, ``mean``, ``wall``), the seconds of each kept
round. The rules, as their harnesses state them (docs/evaluation.md has the sources):

* **GSO** (Opt@1): per-test mean times; the candidate must beat the base on the whole
  (mean of per-test means lower) with a geometric-mean speedup over base
  ``>= GSO_MIN_SPEEDUP`` (1.2), and its harmonic-mean speedup relative to the gold patch
  must be ``> GSO_GOLD_RATIO`` (0.95).
* **SWE-fficiency**: speedup = mean base time / mean candidate time of the workload's
  ``Mean:``; score = candidate speedup / gold speedup; a patch that fails its tests counts
  as speedup 1 (the unchanged code). The benchmark has no pass mark: we say it passed when
  the score is ``>= SWEF_MATCH`` (0.95, "matches the expert", as GSO's ratio).
* **SWE-Perf**: per test, both sides' samples go through the IQR filter (1.5 IQR); the
  gain is the largest fraction ``d`` for which base times scaled by ``1 - d`` are still
  significantly slower than the candidate's (one-sided Mann-Whitney U, ``p <
  SWEPERF_ALPHA`` = 0.1), 0 when none is; the instance's gain is the mean over its tests,
  and it passed when that gain is above 0.

Every function returns a JSON-ready dict with ``benchmark``, ``passed`` (None when it
cannot be judged, e.g. no gold timing), ``speedup_base`` / ``speedup_gold`` (None when
unknown) and the rule's inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from agentfleet.evaluation.mannwhitney import iqr_filter, mann_whitney_u

__all__ = [
    "BENCHMARKS",
    "GSO_GOLD_RATIO",
    "GSO_MIN_SPEEDUP",
    "SWEF_MATCH",
    "SWEPERF_ALPHA",
    "benchmark_summary",
    "benchmark_verdict",
    "failed_verdict",
    "gso_verdict",
    "swefficiency_verdict",
    "sweperf_gain",
    "sweperf_verdict",
]

BENCHMARKS: tuple[str, ...] = ("gso", "swe-perf", "swefficiency")
GSO_MIN_SPEEDUP = 1.2
GSO_GOLD_RATIO = 0.95
SWEF_MATCH = 0.95
SWEPERF_ALPHA = 0.1

Arm = Mapping[str, Sequence[float]]  # metric -> seconds per round


def _mean(xs: Sequence[float]) -> float:
    if not xs:
        raise ValueError("no samples")
    return sum(xs) / len(xs)


def _geomean(xs: Sequence[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def _hmean(xs: Sequence[float]) -> float:
    return len(xs) / sum(1.0 / x for x in xs)


def _metrics(*arms: Arm) -> list[str]:
    names = list(arms[0])
    for arm in arms[1:]:
        if set(arm) != set(names):
            raise ValueError(f"arms report different metrics: {sorted(names)} vs {sorted(arm)}")
    if not names:
        raise ValueError("no metrics")
    return names


def _ratios(before: Arm, after: Arm, names: list[str]) -> list[float]:
    return [_mean(before[n]) / max(_mean(after[n]), 1e-12) for n in names]


def gso_verdict(base: Arm, cand: Arm, gold: Arm | None) -> dict[str, Any]:
    """GSO's Opt@1 (module doc); ``gold`` None: ``opt_commit`` and ``passed`` are None."""
    names = _metrics(base, cand) if gold is None else _metrics(base, cand, gold)
    over_base = _ratios(base, cand, names)
    base_mean = _mean([_mean(base[n]) for n in names])
    cand_mean = _mean([_mean(cand[n]) for n in names])
    gm_base = _geomean(over_base)
    opt_base = base_mean > cand_mean and gm_base >= GSO_MIN_SPEEDUP
    out: dict[str, Any] = {
        "benchmark": "gso",
        "tests": names,
        "per_test_speedup_base": over_base,
        "gm_speedup_base": gm_base,
        "opt_base": opt_base,
        "speedup_base": gm_base,
        "speedup_gold": None,
        "hm_speedup_gold": None,
        "opt_commit": None,
        "passed": None,
        "rule": f"gm speedup over base >= {GSO_MIN_SPEEDUP} and hm speedup vs gold > "
        f"{GSO_GOLD_RATIO}",
    }
    if gold is not None:
        over_gold = _ratios(gold, cand, names)
        hm_gold = _hmean(over_gold)
        out.update(
            per_test_speedup_gold=over_gold,
            gold_gm_speedup_base=_geomean(_ratios(base, gold, names)),
            hm_speedup_gold=hm_gold,
            speedup_gold=hm_gold,
            opt_commit=bool(opt_base and hm_gold > GSO_GOLD_RATIO),
        )
        out["passed"] = out["opt_commit"]
    return out


def swefficiency_verdict(
    base: Arm, cand: Arm, gold: Arm | None, *, gold_speedup: float | None = None
) -> dict[str, Any]:
    """SWE-fficiency's ratio (module doc). Without a gold arm, ``gold_speedup`` (the
    dataset's recorded one) is used if given."""
    names = _metrics(base, cand)
    speedup = _geomean(_ratios(base, cand, names))
    source = "recorded"
    if gold is not None:
        gold_speedup = _geomean(_ratios(base, _only(gold, names), names))
        source = "measured"
    return _swef(speedup, gold_speedup, source if gold_speedup is not None else None)


def _only(arm: Arm, names: list[str]) -> Arm:
    missing = [n for n in names if n not in arm]
    if missing:
        raise ValueError(f"gold arm lacks metrics {missing}")
    return {n: arm[n] for n in names}


def _swef(speedup: float, gold_speedup: float | None, source: str | None) -> dict[str, Any]:
    ratio = speedup / gold_speedup if gold_speedup and gold_speedup > 0 else None
    return {
        "benchmark": "swefficiency",
        "speedup_base": speedup,
        "gold_speedup_base": gold_speedup,
        "gold_speedup_source": source,
        "speedup_ratio": ratio,
        "speedup_gold": ratio,
        "passed": None if ratio is None else bool(ratio >= SWEF_MATCH),
        "rule": f"candidate speedup / gold speedup >= {SWEF_MATCH} (failing tests: speedup 1)",
    }


def sweperf_gain(base: Sequence[float], cand: Sequence[float], *, steps: int = 40) -> float:
    """SWE-Perf's gain of one test: the largest ``d`` in [0, 1) with ``base * (1 - d)``
    still significantly slower than ``cand`` (one-sided Mann-Whitney U, p < alpha), after
    the IQR filter; 0 when the base is not significantly slower at all."""
    b, c = iqr_filter(base), iqr_filter(cand)

    def significant(d: float) -> bool:
        return mann_whitney_u([x * (1.0 - d) for x in b], c, "greater").p < SWEPERF_ALPHA

    if not significant(0.0):
        return 0.0
    lo, hi = 0.0, 1.0  # significant at lo, not at hi (all base times 0)
    for _ in range(steps):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if significant(mid) else (lo, mid)
    return lo


def sweperf_verdict(base: Arm, cand: Arm, gold: Arm | None = None) -> dict[str, Any]:
    """SWE-Perf's significant gain (module doc); the gold's gain is reported beside."""
    names = _metrics(base, cand)
    gains = {n: sweperf_gain(base[n], cand[n]) for n in names}
    pvalues = {
        n: mann_whitney_u(iqr_filter(base[n]), iqr_filter(cand[n]), "greater").p for n in names
    }
    gain = _mean(list(gains.values()))
    out: dict[str, Any] = {
        "benchmark": "swe-perf",
        "tests": names,
        "per_test_gain": gains,
        "per_test_p": pvalues,
        "gain": gain,
        "speedup_base": _geomean(_ratios(base, cand, names)),
        "speedup_gold": None,
        "passed": bool(gain > 0.0),
        "rule": f"mean over tests of the largest significant gain (Mann-Whitney p < "
        f"{SWEPERF_ALPHA}, IQR-filtered) > 0",
    }
    if gold is not None:
        g = _only(gold, names)
        out["gold_gain"] = _mean([sweperf_gain(base[n], g[n]) for n in names])
        out["speedup_gold"] = _geomean(_ratios(g, cand, names))
    return out


def failed_verdict(
    benchmark: str, status: str, *, gold_speedup: float | None = None
) -> dict[str, Any]:
    """The verdict of a patch that never reached the timing (build, tests or output
    failed): not passed; for SWE-fficiency, the ratio of speedup 1 to the gold's."""
    if benchmark == "swefficiency":
        out = _swef(1.0, gold_speedup, "recorded" if gold_speedup is not None else None)
        out["passed"] = False
    else:
        out = {"benchmark": benchmark, "speedup_base": None, "speedup_gold": None}
        out["passed"] = False
    out["failed_status"] = status
    return out


def benchmark_verdict(
    benchmark: str,
    samples: Mapping[str, Arm],
    *,
    gold_speedup: float | None = None,
) -> dict[str, Any]:
    """The verdict of ``benchmark`` over ``samples`` (arm -> metric -> seconds); arms
    ``baseline`` and ``candidate`` are needed, ``gold`` is optional."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}: one of {', '.join(BENCHMARKS)}")
    base, cand, gold = samples["baseline"], samples["candidate"], samples.get("gold")
    if benchmark == "gso":
        return gso_verdict(base, cand, gold)
    if benchmark == "swefficiency":
        return swefficiency_verdict(base, cand, gold, gold_speedup=gold_speedup)
    return sweperf_verdict(base, cand, gold)


def _finite_pos(x: Any) -> float | None:
    ok = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0
    return float(x) if ok else None


def benchmark_summary(infos: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per benchmark, over the evaluations' ``info`` dicts that carry a verdict
    (``info["benchmark"]``): ``n``, ``passed``, ``pass_rate`` (the benchmark's own rule),
    the geometric means of the speedup over base and relative to gold (over those that
    have one), and for SWE-fficiency the harmonic mean of its ratio (its harness's figure:
    a failing patch counts as speedup 1)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for info in infos:
        verdict = info.get("benchmark") if isinstance(info, Mapping) else None
        if isinstance(verdict, Mapping) and verdict.get("benchmark") in BENCHMARKS:
            groups.setdefault(str(verdict["benchmark"]), []).append(verdict)
    out: dict[str, dict[str, Any]] = {}
    for name, verdicts in groups.items():
        n = len(verdicts)
        passed = sum(v.get("passed") is True for v in verdicts)
        base = [x for v in verdicts if (x := _finite_pos(v.get("speedup_base")))]
        gold = [x for v in verdicts if (x := _finite_pos(v.get("speedup_gold")))]
        figures: dict[str, Any] = {
            "n": n,
            "passed": passed,
            "pass_rate": passed / n,
            "geomean_speedup_base": _geomean(base) if base else None,
            "geomean_speedup_gold": _geomean(gold) if gold else None,
        }
        if name == "swefficiency":
            ratios = [x for v in verdicts if (x := _finite_pos(v.get("speedup_ratio")))]
            figures["hm_speedup_ratio"] = _hmean(ratios) if ratios else None
        out[name] = figures
    return out
