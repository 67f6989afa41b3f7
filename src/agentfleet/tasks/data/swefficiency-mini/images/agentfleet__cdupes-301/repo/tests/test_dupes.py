import random

from cdupes import count_dupes


def test_small():
    assert count_dupes([]) == 0
    assert count_dupes([1, 2, 1, 1, 3]) == 2


def test_random():
    rng = random.Random(2)
    values = [rng.randrange(300) for _ in range(2000)]
    assert count_dupes(values) == len(values) - len(set(values))
