import random

from medians import running_medians


def test_small():
    assert running_medians([5, 1, 3, 2]) == [5, 1, 3, 2]
    assert running_medians([]) == []


def test_long_stream():
    rng = random.Random(11)
    for _ in range(5500):  # many mid-length streams
        values = [rng.random() for _ in range(100)]
        out = running_medians(values)
        assert out[-1] == sorted(values)[(100 - 1) // 2]
        assert len(out) == 100
    for _ in range(100):  # small cases against sorted prefixes
        small = [rng.randrange(50) for _ in range(20)]
        want = [sorted(small[: i + 1])[i // 2] for i in range(20)]
        assert running_medians(small) == want
