import random
import unittest

from anagrams import are_anagrams, group_anagrams, largest_groups, signature


class AnagramTest(unittest.TestCase):
    def test_signature(self):
        self.assertEqual(signature("Dormitory!"), "dimoorrty")
        self.assertTrue(are_anagrams("Listen", "silent"))
        self.assertFalse(are_anagrams("abc", "abd"))

    def test_groups_order(self):
        words = ["tea", "Eat", "tan", "ate", "nat", "bat", "eat"]
        self.assertEqual(group_anagrams(words),
                         [["tea", "Eat", "ate", "eat"], ["tan", "nat"], ["bat"]])

    def test_non_letters_ignored(self):
        self.assertEqual(group_anagrams(["a-b", "ba", "", "!"]), [["a-b", "ba"], ["", "!"]])

    def test_largest(self):
        words = ["ab", "ba", "cd", "dc", "xyz", "zyx", "yxz", "q"]
        self.assertEqual(largest_groups(words, k=2), [["xyz", "zyx", "yxz"], ["ab", "ba"]])
        self.assertEqual(largest_groups(words, k=5, min_size=1)[-1], ["q"])

    def test_random_against_reference(self):
        rng = random.Random(2)
        words = ["".join(rng.choice("abcA") for _ in range(rng.randint(0, 4))) for _ in range(300)]
        groups = group_anagrams(words)
        self.assertEqual(sorted(w for g in groups for w in g), sorted(words))
        firsts = [g[0] for g in groups]
        self.assertEqual(firsts, [w for i, w in enumerate(words)
                                  if all(not are_anagrams(w, v) for v in words[:i])])
        for g in groups:
            self.assertEqual(g, [w for w in words if are_anagrams(w, g[0])])


if __name__ == "__main__":
    unittest.main()
