"""Which timing rounds count, and when to stop adding rounds.

**Outlier rule** (:func:`outlier_rounds`): a round is one interleaved run of every arm; a
disturbance that hits one arm's run (another job waking up, a migration) shows as that
round's paired ratio ``baseline / candidate`` standing apart from the others. With at least
:data:`MIN_ROUNDS_FOR_OUTLIERS` rounds, a round whose log ratio lies outside Tukey's fences
(``Q1 - 3 IQR``, ``Q3 + 3 IQR``: "far out") is dropped, the farthest first, at most a
fifth of the rounds. A drift that slows both arms of a round alike leaves its ratio alone
and is kept (the pairing already cancels it).

**Adaptive repeats** (:func:`ci_relative_width`): after the configured rounds, rounds are
added two at a time (keeping the alternation balanced) until the paired bootstrap 95%
interval of the speedup is narrower than ``target_ci`` times the speedup, or
``max_repeats`` rounds have run.

**Early stop** (:func:`reward_decided`): from ``early_stop_rounds`` rounds on (3 by
default), the rounds stop before ``repeats`` when more rounds cannot change the reward:
the whole paired bootstrap 95% interval of the speedup, widened by the noise threshold,
lies where the reward is flat (at or above the speedup that earns the full reward, or
below 1, which earns none). A speedup near 1, or between 1 and the full-reward speedup,
gets every round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from agentfleet.evaluation.reward import RewardConfig
from agentfleet.evaluation.speedup import bootstrap_ratio_ci, paired_speedup, quantile

MIN_ROUNDS_FOR_OUTLIERS = 5
FENCE = 3.0  # IQRs beyond the quartiles: Tukey's "far out"
MAX_DROPPED_SHARE = 0.2


def outlier_rounds(baseline: Sequence[float], candidate: Sequence[float]) -> list[int]:
    """Indices of the rounds the outlier rule drops (sorted); see the module doc."""
    n = len(baseline)
    if n != len(candidate) or n < MIN_ROUNDS_FOR_OUTLIERS:
        return []
    pairs = zip(baseline, candidate, strict=True)
    logs = [math.log(max(b, 1e-12) / max(c, 1e-12)) for b, c in pairs]
    q1, q3 = quantile(logs, 0.25), quantile(logs, 0.75)
    spread = q3 - q1
    lo, hi = q1 - FENCE * spread, q3 + FENCE * spread
    out = [i for i, x in enumerate(logs) if x < lo or x > hi]
    mid = (q1 + q3) / 2
    out.sort(key=lambda i: abs(logs[i] - mid), reverse=True)
    return sorted(out[: int(n * MAX_DROPPED_SHARE)])


def keep(samples: Sequence[float], dropped: Sequence[int]) -> list[float]:
    """``samples`` without the rounds in ``dropped``."""
    gone = set(dropped)
    return [x for i, x in enumerate(samples) if i not in gone]


def ci_relative_width(
    baseline: Sequence[float], candidate: Sequence[float], *, resamples: int, seed: int
) -> float:
    """Width of the paired bootstrap 95% interval of the speedup over the speedup, after
    the outlier rule (the figure ``target_ci`` is compared with)."""
    dropped = outlier_rounds(baseline, candidate)
    b, c = keep(baseline, dropped), keep(candidate, dropped)
    lo, hi = bootstrap_ratio_ci(b, c, resamples=resamples, seed=seed)
    return (hi - lo) / max(paired_speedup(b, c), 1e-9)


def flat_reward_bounds(reward: RewardConfig) -> tuple[float, float] | None:
    """``(low, high)``: the reward is the same for every speedup under ``low``, and for
    every speedup at or over ``high``; None when it depends on more than the speedup
    (``relative`` reads the reference's)."""
    if reward.kind in ("log_speedup", "linear"):
        return 1.0, reward.target
    if reward.kind == "binary":
        return reward.threshold, reward.threshold
    return None


def reward_decided(
    baseline: Sequence[float],
    candidate: Sequence[float],
    reward: RewardConfig,
    *,
    noise_threshold: float,
    resamples: int,
    seed: int,
) -> bool:
    """True when the paired bootstrap 95% interval of the speedup, widened by
    ``noise_threshold``, lies where the reward is flat (see the module doc)."""
    bounds = flat_reward_bounds(reward)
    if bounds is None or len(baseline) < 2:
        return False
    low, high = bounds
    lo, hi = bootstrap_ratio_ci(baseline, candidate, resamples=resamples, seed=seed)
    s = paired_speedup(baseline, candidate)  # the figure the reward will read
    lo, hi = min(lo, s), max(hi, s)
    margin = 1.0 + noise_threshold
    return lo >= high * margin or hi * margin < low


__all__ = [
    "FENCE",
    "MAX_DROPPED_SHARE",
    "MIN_ROUNDS_FOR_OUTLIERS",
    "ci_relative_width",
    "flat_reward_bounds",
    "keep",
    "outlier_rounds",
    "reward_decided",
]
