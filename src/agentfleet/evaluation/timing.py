"""The timing figures of an evaluation: the samples of the kept rounds on the chosen clock,
the speedup and its interval, both clocks' ratios, the reference's, and how many rounds
ran (:mod:`~agentfleet.evaluation.rounds` says which count and when to stop)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from agentfleet.evaluation.config import EvalConfig, TimingProtocol
from agentfleet.evaluation.rounds import ci_relative_width, keep, outlier_rounds, reward_decided
from agentfleet.evaluation.speedup import Samples, paired_speedup, speedup_stats


def clock_of(samples: Samples, clock: str) -> dict[str, list[float]]:
    return samples.cpu_s if clock == "cpu" else samples.wall_s


def more_rounds(cfg: EvalConfig) -> Callable[[Samples], Awaitable[bool]] | None:
    """``measure``'s ``more`` for ``cfg.target_ci`` (None: fixed repeats): True while the
    interval is wider than the target (the bootstrap runs in a thread, off the loop)."""
    target = cfg.target_ci
    if target is None:
        return None

    async def more(samples: Samples) -> bool:
        c = clock_of(samples, cfg.clock)
        width = await asyncio.to_thread(
            ci_relative_width,
            c["baseline"],
            c["candidate"],
            resamples=cfg.bootstrap_resamples,
            seed=cfg.seed,
        )
        return width > target

    return more


def decided_early(cfg: EvalConfig) -> Callable[[Samples], Awaitable[bool]] | None:
    """``measure``'s ``decided`` for ``cfg.early_stop_rounds`` (None: off, and off with
    ``target_ci``, which asks for a narrow interval): True once the reward is decided."""
    if cfg.early_stop_rounds is None or cfg.target_ci is not None:
        return None

    async def decided(samples: Samples) -> bool:
        c = clock_of(samples, cfg.clock)
        return await asyncio.to_thread(
            reward_decided,
            c["baseline"],
            c["candidate"],
            cfg.reward,
            noise_threshold=cfg.noise_threshold,
            resamples=cfg.bootstrap_resamples,
            seed=cfg.seed,
        )

    return decided


@dataclass
class Timing:
    speedup: float
    stats: dict[str, Any]  # info["timing"]
    reference_speedup: float | None
    clocks_disagree: bool


def timing_stats(
    samples: Samples, cfg: EvalConfig, protocol: TimingProtocol | None = None
) -> Timing:
    """Everything ``info["timing"]`` holds, over the rounds the outlier rule keeps (but
    ``within_noise`` holds too when it does over every round); ``protocol``: the rounds
    asked for (:meth:`EvalConfig.protocol`), None: ``cfg``'s."""
    clock = clock_of(samples, cfg.clock)
    ran = len(clock["baseline"])
    dropped = outlier_rounds(clock["baseline"], clock["candidate"]) if cfg.drop_outliers else []
    wall = {k: keep(v, dropped) for k, v in samples.wall_s.items()}
    cpu = {k: keep(v, dropped) for k, v in samples.cpu_s.items()}
    chosen = cpu if cfg.clock == "cpu" else wall
    judge = partial(
        speedup_stats,
        noise_threshold=cfg.noise_threshold,
        max_plausible_speedup=cfg.max_plausible_speedup,
        resamples=cfg.bootstrap_resamples,
        seed=cfg.seed,
    )
    stats = judge(chosen["baseline"], chosen["candidate"])
    # A drop never turns noise into a change: the interval over the rounds kept ignores that
    # the round left out was the one that disagreed (twice the false calls at 5 rounds).
    every = None
    if dropped:
        every = judge(clock["baseline"], clock["candidate"])["within_noise"]
        stats["within_noise"] = stats["within_noise"] or every
    stats["within_noise_all_rounds"] = every
    speedup = float(stats.pop("speedup"))
    stats["clock"] = cfg.clock
    wall_speedup = paired_speedup(wall["baseline"], wall["candidate"])
    cpu_speedup = paired_speedup(cpu["baseline"], cpu["candidate"])
    stats["wall_speedup"], stats["cpu_speedup"] = wall_speedup, cpu_speedup
    ratio = max(wall_speedup, cpu_speedup) / max(min(wall_speedup, cpu_speedup), 1e-9)
    stats["baseline_wall_s"], stats["candidate_wall_s"] = wall["baseline"], wall["candidate"]
    stats["baseline_cpu_s"], stats["candidate_cpu_s"] = cpu["baseline"], cpu["candidate"]
    stats["order"] = samples.order
    if protocol is not None:
        stats["repeats"], stats["warmup"] = protocol.repeats, protocol.warmup
        stats["protocol"] = protocol.source  # operator | task | default, per number
    else:
        stats["repeats"], stats["warmup"] = cfg.repeats, cfg.warmup
    stats["rounds"] = ran  # rounds that ran (more than repeats when target_ci added some)
    stats["stopped_early"] = samples.stopped_early  # the reward was decided before repeats
    stats["rounds_used"] = ran - len(dropped)
    stats["dropped_rounds"] = dropped  # indices into order, by the outlier rule
    lo, hi = stats["ci95"]
    stats["ci_relative_width"] = (hi - lo) / max(speedup, 1e-9)
    stats["target_ci"] = cfg.target_ci
    reference_speedup: float | None = None
    if "reference" in chosen:
        reference_speedup = paired_speedup(chosen["baseline"], chosen["reference"])
        stats["reference_s"] = chosen["reference"]
    return Timing(speedup, stats, reference_speedup, bool(ratio > cfg.clock_mismatch_factor))


__all__ = ["Timing", "clock_of", "decided_early", "more_rounds", "timing_stats"]
