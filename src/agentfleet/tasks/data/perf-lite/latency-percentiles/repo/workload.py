"""Replay a synthetic latency trace and print percentile statistics."""

import hashlib
import random

from latency import LatencyTracker, live_report


def trace(n, seed=21):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ms = rng.lognormvariate(3.0, 0.6)
        if rng.random() < 0.01:
            ms *= 20
        out.append(round(ms, 3))
    return out


def main():
    samples = trace(2800)
    report = live_report(samples)
    digest = hashlib.sha256(repr(report).encode()).hexdigest()[:16]
    print(f"steps={len(report)} last={report[-1]} report_sha={digest}")
    print(LatencyTracker(samples).summary())


if __name__ == "__main__":
    main()
