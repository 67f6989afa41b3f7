import random

from medians import running_medians


def test_small():
    assert running_medians([5, 1, 3, 2]) == [5, 1, 3, 2]
    assert running_medians([]) == []


def test_long_stream():
    rng = random.Random(11)
    values = [rng.random() for _ in range(2000)]
    out = running_medians(values)
    assert out[-1] == sorted(values)[999]
    assert len(out) == 2000
    for _ in range(400):  # small cases against sorted prefixes
        small = [rng.randrange(50) for _ in range(20)]
        want = [sorted(small[: i + 1])[i // 2] for i in range(20)]
        assert running_medians(small) == want
