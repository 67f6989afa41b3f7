"""Reward functions (speedup -> [0, 1]) and summary figures over many evaluations.

Formulas and defaults are documented in docs/evaluation.md.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agentfleet.evaluation.schema import EvalResult

RewardKind = Literal["log_speedup", "linear", "binary", "relative"]

FAST_P_THRESHOLDS: tuple[float, ...] = (1.0, 1.5, 2.0)


class RewardConfig(BaseModel):
    """How a measured speedup becomes a reward.

    * ``log_speedup`` (default): ``clip(log(s) / log(target), 0, 1)``
    * ``linear``: ``clip((s - 1) / (target - 1), 0, 1)``
    * ``binary``: ``1 if s >= threshold else 0``
    * ``relative``: ``clip(log(s) / log(reference_speedup), 0, 1)``; falls back to
      ``log_speedup`` when no reference speedup above ``1 + min_reference_gain`` is known.

    Incorrect solutions get 0. With ``zero_within_noise`` (default) a speedup that is not
    distinguishable from noise also gets 0.
    """

    model_config = ConfigDict(frozen=True)

    kind: RewardKind = "log_speedup"
    target: float = Field(default=2.0, gt=1.0)
    threshold: float = Field(default=1.2, gt=0.0)
    zero_within_noise: bool = True
    min_reference_gain: float = Field(default=0.05, ge=0.0)

    @model_validator(mode="after")
    def _check(self) -> RewardConfig:
        if not math.isfinite(self.target):
            raise ValueError("target must be finite")
        return self


def _clip01(x: float) -> float:
    if math.isnan(x):
        return 0.0
    return min(max(x, 0.0), 1.0)


def _log_ratio(speedup: float, target: float) -> float:
    if speedup <= 0.0 or math.isnan(speedup):
        return 0.0
    if math.isinf(speedup):
        return 1.0
    return _clip01(math.log(speedup) / math.log(target))


def speedup_reward(
    speedup: float,
    config: RewardConfig | None = None,
    *,
    reference_speedup: float | None = None,
) -> float:
    """The reward of a *correct* solution with this speedup, in [0, 1], non-decreasing in
    ``speedup``. Noise handling is :func:`compute_reward`'s job."""
    cfg = config or RewardConfig()
    if cfg.kind == "log_speedup":
        return _log_ratio(speedup, cfg.target)
    if cfg.kind == "linear":
        if math.isnan(speedup):
            return 0.0
        return _clip01((speedup - 1.0) / (cfg.target - 1.0))
    if cfg.kind == "binary":
        return 1.0 if speedup >= cfg.threshold else 0.0
    if cfg.kind == "relative":
        ref = reference_speedup
        if ref is None or not math.isfinite(ref) or ref <= 1.0 + cfg.min_reference_gain:
            return _log_ratio(speedup, cfg.target)
        return _log_ratio(speedup, ref)
    raise ValueError(f"unknown reward kind {cfg.kind!r}")


def compute_reward(
    speedup: float,
    *,
    correct: bool,
    within_noise: bool = False,
    config: RewardConfig | None = None,
    reference_speedup: float | None = None,
) -> float:
    """0 when incorrect, 0 when within noise (if ``zero_within_noise``), otherwise
    :func:`speedup_reward`."""
    cfg = config or RewardConfig()
    if not correct:
        return 0.0
    if within_noise and cfg.zero_within_noise:
        return 0.0
    return speedup_reward(speedup, cfg, reference_speedup=reference_speedup)


# ---------------------------------------------------------------- summaries


def _as_result(r: EvalResult | Sequence[Any]) -> EvalResult:
    if isinstance(r, EvalResult):
        return r
    reward, speedup, info = r
    return EvalResult(reward=reward, speedup=speedup, info=dict(info or {}))


def _geomean(xs: Sequence[float]) -> float | None:
    vals = [x for x in xs if x > 0 and math.isfinite(x)]
    if not vals:
        return None
    return math.exp(sum(math.log(x) for x in vals) / len(vals))


def is_correct(result: EvalResult) -> bool:
    """Correct means the evaluation reached the timing: ``info["status"] == "ok"``."""
    return result.info.get("status") == "ok"


def summarize(
    results: Iterable[EvalResult | Sequence[Any]],
    thresholds: Sequence[float] = FAST_P_THRESHOLDS,
) -> dict[str, Any]:
    """Summary figures over evaluations (``EvalResult`` or ``(reward, speedup, info)``).

    * ``n``, ``n_correct``, ``correct_rate``, ``status_counts``
    * ``mean_reward``: over all ``n`` results
    * ``geomean_speedup``: geometric mean over the *correct* results (``None`` if none)
    * ``geomean_speedup_all``: geometric mean over all results, an incorrect result
      counting as 1.0 (as if the change had not been shipped)
    * ``fast_p``: for each ``p``, the share of all results that are correct, have
      ``speedup > p`` *and* are not ``within_noise`` (a speedup indistinguishable from 1.0
      is not counted as faster); ``fast_1.0``, ``fast_1.5``, ``fast_2.0`` also as flat keys
    """
    rs = [_as_result(r) for r in results]
    n = len(rs)
    correct = [r for r in rs if is_correct(r)]
    measured = [r for r in correct if not r.info.get("within_noise")]
    fast_p = {
        f"{p:g}" if "." in f"{p:g}" else f"{p:.1f}": (
            sum(1 for r in measured if r.speedup > p) / n if n else 0.0
        )
        for p in thresholds
    }
    summary: dict[str, Any] = {
        "n": n,
        "n_correct": len(correct),
        "correct_rate": len(correct) / n if n else 0.0,
        "mean_reward": sum(r.reward for r in rs) / n if n else 0.0,
        "geomean_speedup": _geomean([r.speedup for r in correct]),
        "geomean_speedup_all": _geomean([r.speedup if is_correct(r) else 1.0 for r in rs])
        if n
        else None,
        "fast_p": fast_p,
        "status_counts": dict(Counter(str(r.info.get("status", "unknown")) for r in rs)),
    }
    for key, value in fast_p.items():
        summary[f"fast_{key}"] = value
    return summary
