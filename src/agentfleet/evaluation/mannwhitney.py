"""The Mann-Whitney U test (normal approximation with tie and continuity corrections) and
the IQR outlier filter SWE-Perf applies before it. Pure Python: no SciPy needed.

``mann_whitney_u(x, y)`` gives the same statistic (``U`` of ``x``) and p-value as
``scipy.stats.mannwhitneyu(x, y, method="asymptotic")``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from agentfleet.evaluation.speedup import quantile

__all__ = ["Alternative", "MannWhitney", "iqr_filter", "mann_whitney_u"]

Alternative = Literal["two-sided", "less", "greater"]


@dataclass(frozen=True)
class MannWhitney:
    u: float  # U statistic of the first sample
    p: float


def _ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Mid-ranks (1-based, ties share the mean rank) and the size of each tie group."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    ties: list[int] = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0
        ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


def _sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def mann_whitney_u(
    x: Sequence[float],
    y: Sequence[float],
    alternative: Alternative = "two-sided",
    *,
    continuity: bool = True,
) -> MannWhitney:
    """Test whether ``x`` tends to be larger (``greater``), smaller (``less``) or either
    (``two-sided``) than ``y``. Every value tied: p = 1."""
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("Mann-Whitney U needs at least one value in each sample")
    if any(not math.isfinite(v) for v in [*x, *y]):
        raise ValueError("Mann-Whitney U needs finite values")
    ranks, ties = _ranks([*x, *y])
    u1 = sum(ranks[:n1]) - n1 * (n1 + 1) / 2.0
    u2 = n1 * n2 - u1
    n = n1 + n2
    mu = n1 * n2 / 2.0
    tie_term = sum(t**3 - t for t in ties) / (n * (n - 1)) if n > 1 else 0.0
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term)
    if var <= 0:
        return MannWhitney(u1, 1.0)
    sigma = math.sqrt(var)
    cc = 0.5 if continuity else 0.0
    if alternative == "greater":
        p = _sf((u1 - mu - cc) / sigma)
    elif alternative == "less":
        p = _sf((u2 - mu - cc) / sigma)
    elif alternative == "two-sided":
        p = 2.0 * _sf((max(u1, u2) - mu - cc) / sigma)
    else:
        raise ValueError(f"unknown alternative {alternative!r}")
    return MannWhitney(u1, min(max(p, 0.0), 1.0))


def iqr_filter(xs: Sequence[float], k: float = 1.5) -> list[float]:
    """``xs`` without the values beyond ``k`` IQRs from the quartiles (Tukey's fences), in
    their order. Fewer than 4 values are kept as they are."""
    if len(xs) < 4:
        return list(xs)
    q1, q3 = quantile(xs, 0.25), quantile(xs, 0.75)
    lo, hi = q1 - k * (q3 - q1), q3 + k * (q3 - q1)
    return [v for v in xs if lo <= v <= hi]
