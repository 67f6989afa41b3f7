import random

from pairs import count_pairs


def test_small():
    assert count_pairs([1, 2, 3, 4], 5) == 2
    assert count_pairs([2, 2, 2], 4) == 3
    assert count_pairs([], 1) == 0


def test_many_pairs():
    rng = random.Random(9)
    for _ in range(2500):  # many short lists
        nums = rng.choices(range(50), k=150)
        seen = {}
        for x in nums:
            seen[x] = seen.get(x, 0) + 1
        want = sum(c * seen.get(50 - x, 0) for x, c in seen.items() if x < 50 - x)
        want += seen.get(25, 0) * (seen.get(25, 0) - 1) // 2
        assert count_pairs(nums, 50) == want
    for _ in range(100):  # small cases against every pair
        small = [rng.randrange(10) for _ in range(25)]
        pairs = [(i, j) for i in range(25) for j in range(i + 1, 25)]
        assert count_pairs(small, 9) == sum(small[i] + small[j] == 9 for i, j in pairs)
