import random
import unittest

from inventory import added, diff_report, kept, load_skus, normalize_sku, removed


class NormalizeTest(unittest.TestCase):
    def test_normalize(self):
        self.assertEqual(normalize_sku(" ab-12 3 "), "AB123")

    def test_load(self):
        self.assertEqual(load_skus(["a-1", "", "# c", "b-2 # note", "A1"]), ["A1", "B2", "A1"])


class DiffTest(unittest.TestCase):
    def test_added_removed_kept(self):
        old = ["A", "B", "C", "B"]
        new = ["D", "C", "E", "D", "A"]
        self.assertEqual(added(old, new), ["D", "E"])
        self.assertEqual(removed(old, new), ["B"])
        self.assertEqual(kept(old, new), ["A", "C"])

    def test_empty(self):
        self.assertEqual(added([], ["X", "X"]), ["X"])
        self.assertEqual(removed([], ["X"]), [])
        self.assertEqual(kept(["X"], []), [])

    def test_inputs_not_modified(self):
        old, new = ["A", "B"], ["B", "C"]
        added(old, new), removed(old, new), kept(old, new)
        self.assertEqual((old, new), (["A", "B"], ["B", "C"]))

    def test_random_against_reference(self):
        rng = random.Random(5)
        for _ in range(50):
            old = [rng.choice("ABCDEFGH") for _ in range(rng.randint(0, 15))]
            new = [rng.choice("ABCDEFGH") for _ in range(rng.randint(0, 15))]
            exp_added = list(dict.fromkeys(s for s in new if s not in set(old)))
            exp_kept = list(dict.fromkeys(s for s in old if s in set(new)))
            self.assertEqual(added(old, new), exp_added)
            self.assertEqual(kept(old, new), exp_kept)
            self.assertEqual(removed(old, new), list(dict.fromkeys(s for s in old if s not in new)))

    def test_report(self):
        report = diff_report(["A", "B"], ["B", "C", "D"], limit=1)
        self.assertEqual(report, "added 2, removed 1, kept 1\n+ C\n- A")


if __name__ == "__main__":
    unittest.main()
