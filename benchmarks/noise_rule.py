"""How often the `within_noise` rule calls noise a gain, and finds a real one, by rounds.

Simulated paired rounds (lognormal noise on every run, no machine time), judged by
`speedup_stats` as the evaluator does, with the bootstrap interval alone (the rule before
the paired t-interval) and as now (the t-interval near 1.0 too):

    python benchmarks/noise_rule.py [--trials 600] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import math
import random

from agentfleet.evaluation.speedup import speedup_stats

# (true speedup, lognormal noise of each run)
CASES = ((1.0, 0.05), (1.0, 0.10), (1.2, 0.05), (1.2, 0.10), (1.5, 0.10), (4.0, 0.30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=600)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    print("rounds  true   noise  gain found: bootstrap alone                 now")
    for rounds in (2, 3, 5, 8):
        for true, sigma in CASES:
            alone = both = 0
            for _ in range(args.trials):
                base = [true * math.exp(rng.gauss(0, sigma)) for _ in range(rounds)]
                cand = [math.exp(rng.gauss(0, sigma)) for _ in range(rounds)]
                s = speedup_stats(base, cand, resamples=args.resamples)
                lo, hi = s["ci95"]
                alone += not (lo <= 1.0 <= hi or abs(s["speedup"] - 1.0) < 0.05)
                both += not s["within_noise"]
            n = args.trials
            print(f"{rounds:>6}  {true:<5}  {sigma:<5}  {alone / n:>24.3f}  {both / n:>19.3f}")


if __name__ == "__main__":
    main()
