"""Request latency tracking with nearest-rank percentiles."""

from __future__ import annotations

import math


class LatencyTracker:
    def __init__(self, samples=()):
        self._samples = []
        for ms in samples:
            self.add(ms)

    def add(self, ms):
        """Record one latency in milliseconds (a finite, non-negative number)."""
        ms = float(ms)
        if not math.isfinite(ms) or ms < 0:
            raise ValueError(f"invalid latency {ms!r}")
        self._samples.append(ms)

    def __len__(self):
        return len(self._samples)

    def percentile(self, p):
        """Nearest-rank percentile: the smallest sample with at least ``p`` % of samples <= it."""
        if not 0 < p <= 100:
            raise ValueError("p must be in (0, 100]")
        if not self._samples:
            raise ValueError("no samples")
        ordered = sorted(self._samples)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1]

    def min(self):
        return self.percentile(100 / max(len(self._samples), 1) / 2) if self._samples else None

    def max(self):
        return self.percentile(100) if self._samples else None

    def mean(self):
        return math.fsum(self._samples) / len(self._samples) if self._samples else None

    def summary(self):
        if not self._samples:
            return {"count": 0}
        return {
            "count": len(self),
            "min": self.min(),
            "p50": self.percentile(50),
            "p95": self.percentile(95),
            "p99": self.percentile(99),
            "max": self.max(),
            "mean": round(self.mean(), 3),
        }


def live_report(samples, ps=(50, 95, 99)):
    """After each sample, the tuple of requested percentiles over everything seen so far."""
    tracker = LatencyTracker()
    out = []
    for ms in samples:
        tracker.add(ms)
        out.append(tuple(tracker.percentile(p) for p in ps))
    return out
