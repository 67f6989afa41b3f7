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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from agentfleet.evaluation.speedup import bootstrap_ratio_ci, quantile, ratio_of_medians

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
    return (hi - lo) / max(ratio_of_medians(b, c), 1e-9)


__all__ = [
    "FENCE",
    "MAX_DROPPED_SHARE",
    "MIN_ROUNDS_FOR_OUTLIERS",
    "ci_relative_width",
    "keep",
    "outlier_rounds",
]
