import random

from intervals import merge


def test_small():
    assert merge([(1, 3), (2, 6), (8, 10), (15, 18)]) == [(1, 6), (8, 10), (15, 18)]
    assert merge([(1, 4), (4, 5)]) == [(1, 5)]
    assert merge([]) == []


def test_merge_many():
    rng = random.Random(5)
    for _ in range(8000):  # many mid-sized merges
        spans = [(x, x + rng.randrange(1, 4)) for x in rng.choices(range(200), k=25)]
        out = merge(spans)
        assert all(a[1] < b[0] for a, b in zip(out, out[1:]))
        assert out[0][0] == min(spans)[0] and out[-1][1] == max(hi for _, hi in spans)
    for _ in range(100):  # small cases against covered points
        small = [(x, x + rng.randrange(3)) for x in (rng.randrange(40) for _ in range(6))]
        got = merge(small)
        covered = {p for lo, hi in small for p in range(lo, hi + 1)}
        assert {p for lo, hi in got for p in range(lo, hi + 1)} == covered
