import math
import random
import unittest

from latency import LatencyTracker, live_report


def nearest_rank(values, p):
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


class TrackerTest(unittest.TestCase):
    def test_percentiles(self):
        t = LatencyTracker([15, 20, 35, 40, 50])
        self.assertEqual(t.percentile(5), 15.0)
        self.assertEqual(t.percentile(30), 20.0)
        self.assertEqual(t.percentile(40), 20.0)
        self.assertEqual(t.percentile(50), 35.0)
        self.assertEqual(t.percentile(100), 50.0)
        self.assertEqual((t.min(), t.max(), t.mean()), (15.0, 50.0, 32.0))

    def test_invalid(self):
        t = LatencyTracker()
        with self.assertRaises(ValueError):
            t.percentile(50)
        for bad in (-1, float("nan"), float("inf")):
            with self.assertRaises(ValueError):
                t.add(bad)
        t.add(1)
        with self.assertRaises(ValueError):
            t.percentile(0)
        with self.assertRaises(ValueError):
            t.percentile(101)

    def test_empty_summary(self):
        t = LatencyTracker()
        self.assertEqual(t.summary(), {"count": 0})
        self.assertIsNone(t.min())
        self.assertIsNone(t.mean())

    def test_summary(self):
        t = LatencyTracker(range(1, 101))
        self.assertEqual(t.summary(), {"count": 100, "min": 1.0, "p50": 50.0, "p95": 95.0,
                                       "p99": 99.0, "max": 100.0, "mean": 50.5})

    def test_live_report_matches_reference(self):
        rng = random.Random(3)
        values = [rng.choice([rng.random() * 100, 7.0, 0.0]) for _ in range(300)]
        report = live_report(values, ps=(1, 50, 90, 100))
        for k, row in enumerate(report):
            seen = values[: k + 1]
            self.assertEqual(row, tuple(nearest_rank(seen, p) for p in (1, 50, 90, 100)))

    def test_mean_is_exact(self):
        t = LatencyTracker([1e16, 1.0, -0.0, 1.0])
        self.assertEqual(t.mean(), (1e16 + 2.0) / 4)


if __name__ == "__main__":
    unittest.main()
