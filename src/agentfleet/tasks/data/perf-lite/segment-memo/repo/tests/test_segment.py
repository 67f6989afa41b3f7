import itertools
import unittest

from segment import best_split, can_split, count_splits


def brute_splits(text, vocab):
    """All splits, by trying every set of cut positions."""
    out = []
    for mask in range(1 << max(len(text) - 1, 0)):
        cuts = [i + 1 for i in range(len(text) - 1) if mask >> i & 1]
        words = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
        if text and all(w in vocab for w in words):
            out.append(words)
    return out


class SegmentTest(unittest.TestCase):
    vocab = ["i", "like", "ice", "cream", "icecream", "li", "ke", "man", "go", "mango"]

    def test_examples(self):
        self.assertTrue(can_split("ilikeicecream", self.vocab))
        self.assertEqual(count_splits("ilikeicecream", self.vocab), 4)
        self.assertEqual(best_split("ilikeicecream", self.vocab), ["i", "like", "icecream"])
        self.assertEqual(best_split("ilikemango", self.vocab), ["i", "like", "mango"])

    def test_impossible(self):
        self.assertFalse(can_split("ilikex", self.vocab))
        self.assertEqual(count_splits("ilikex", self.vocab), 0)
        self.assertIsNone(best_split("ilikex", self.vocab))

    def test_empty(self):
        self.assertTrue(can_split("", []))
        self.assertEqual(count_splits("", ["a"]), 1)
        self.assertEqual(best_split("", ["a"]), [])
        self.assertFalse(can_split("a", []))

    def test_tie_break_alphabetical(self):
        self.assertEqual(best_split("abc", ["ab", "c", "a", "bc"]), ["a", "bc"])

    def test_against_brute_force(self):
        vocab = {"a", "b", "ab", "ba", "aba", "bb"}
        for n in range(0, 11):
            for letters in itertools.product("ab", repeat=n):
                text = "".join(letters)
                splits = brute_splits(text, vocab) if text else [[]]
                self.assertEqual(count_splits(text, vocab), len(splits), text)
                self.assertEqual(can_split(text, vocab), bool(splits), text)
                best = min(splits, key=lambda s: (len(s), s)) if splits else None
                self.assertEqual(best_split(text, vocab), best, text)

    def test_separate_calls_independent(self):
        self.assertEqual(count_splits("aa", ["a"]), 1)
        self.assertEqual(count_splits("aa", ["a", "aa"]), 2)
        self.assertEqual(best_split("aa", ["a"]), ["a", "a"])
        self.assertEqual(best_split("aa", ["a", "aa"]), ["aa"])


if __name__ == "__main__":
    unittest.main()
