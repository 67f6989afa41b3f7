import unittest

from batches import chunked, flatten, interleave, rebatch


class BatchesTest(unittest.TestCase):
    def test_flatten(self):
        self.assertEqual(flatten([[1, 2], [], (3,), range(4, 6)]), [1, 2, 3, 4, 5])
        self.assertEqual(flatten([]), [])

    def test_flatten_returns_new_list(self):
        batch = [1, 2]
        out = flatten([batch])
        out.append(3)
        self.assertEqual(batch, [1, 2])

    def test_chunked(self):
        self.assertEqual(chunked(range(7), 3), [[0, 1, 2], [3, 4, 5], [6]])
        self.assertEqual(chunked([], 3), [])
        self.assertEqual(chunked(iter("abcd"), 2), [["a", "b"], ["c", "d"]])
        with self.assertRaises(ValueError):
            chunked([1], 0)

    def test_chunks_are_lists(self):
        chunks = chunked((1, 2, 3), 2)
        self.assertTrue(all(type(c) is list for c in chunks))

    def test_interleave(self):
        self.assertEqual(interleave([1, 2, 3], "ab", [], (9,)), [1, "a", 9, 2, "b", 3])
        self.assertEqual(interleave(), [])

    def test_rebatch_large(self):
        batches = [list(range(i, i + i % 5)) for i in range(2000)]
        flat = [x for b in batches for x in b]
        out = rebatch(batches, 6)
        self.assertEqual([x for c in out for x in c], flat)
        self.assertTrue(all(len(c) == 6 for c in out[:-1]))


if __name__ == "__main__":
    unittest.main()
