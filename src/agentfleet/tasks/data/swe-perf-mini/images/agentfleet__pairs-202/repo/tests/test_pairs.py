import random

from pairs import count_pairs


def test_small():
    assert count_pairs([1, 2, 3, 4], 5) == 2
    assert count_pairs([2, 2, 2], 4) == 3
    assert count_pairs([], 1) == 0


def test_many_pairs():
    rng = random.Random(9)
    nums = [rng.randrange(500) for _ in range(2500)]
    assert count_pairs(nums, 500) == 6291
    for _ in range(300):  # small cases against every pair
        small = [rng.randrange(10) for _ in range(25)]
        pairs = [(i, j) for i in range(25) for j in range(i + 1, 25)]
        assert count_pairs(small, 9) == sum(small[i] + small[j] == 9 for i, j in pairs)
