"""How often a timing is called a change (not ``within_noise``) with the outlier rule:
judged on the rounds kept alone (before) and as the evaluator does now (a dropped round
never turns noise into a change), by rounds, noise and true speedup.

Simulated paired rounds (lognormal noise on every run; with spikes, 1 run in 10 slowed by
up to 2x), no machine time, judged by ``timing.timing_stats``:

    python benchmarks/outlier_rule.py [--trials 600] [--resamples 300]
"""

from __future__ import annotations

import argparse
import math
import random

from agentfleet.evaluation.config import EvalConfig
from agentfleet.evaluation.rounds import keep
from agentfleet.evaluation.speedup import Samples, speedup_stats
from agentfleet.evaluation.timing import timing_stats

# (noise of each run, spikes, true speedups)
CASES = ((0.05, False), (0.10, False), (0.05, True))
SPEEDUPS = (1.0, 1.1, 1.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=600)
    ap.add_argument("--resamples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=2)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    cfg = EvalConfig(bootstrap_resamples=args.resamples, clock="wall")
    print("rounds  noise  spikes  true  called a change: kept rounds alone   now   dropped")
    for rounds in (5, 9):
        for sigma, spikes in CASES:

            def run(sigma: float = sigma, spikes: bool = spikes) -> float:
                x = math.exp(rng.gauss(0, sigma))
                return x * (1 + rng.random()) if spikes and rng.random() < 0.1 else x

            for true in SPEEDUPS:
                before = now = dropped = 0
                for _ in range(args.trials):
                    base = [true * run() for _ in range(rounds)]
                    cand = [run() for _ in range(rounds)]
                    arms = {"baseline": base, "candidate": cand}
                    samples = Samples(wall_s=arms, cpu_s=arms, order=[list(arms)] * rounds)
                    stats = timing_stats(samples, cfg).stats
                    gone = stats["dropped_rounds"]
                    kept = speedup_stats(
                        keep(base, gone), keep(cand, gone), resamples=args.resamples
                    )
                    before += not kept["within_noise"]
                    now += not stats["within_noise"]
                    dropped += bool(gone)
                n = args.trials
                print(
                    f"{rounds:>6}  {sigma:<5}  {'yes' if spikes else 'no':<6}  {true:<4}"
                    f"  {before / n:>34.3f}  {now / n:>4.3f}  {dropped / n:>7.2f}"
                )


if __name__ == "__main__":
    main()
