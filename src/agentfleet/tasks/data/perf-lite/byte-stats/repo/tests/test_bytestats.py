import math
import random
import unittest

from bytestats import (
    byte_histogram,
    checksum16,
    count_lines,
    describe,
    entropy,
    printable_ratio,
    to_hex,
)


class ByteStatsTest(unittest.TestCase):
    def test_histogram(self):
        hist = byte_histogram(b"abca\x00")
        self.assertEqual(len(hist), 256)
        self.assertEqual((hist[0], hist[97], hist[98], hist[255]), (1, 2, 1, 0))
        self.assertEqual(byte_histogram(bytearray(b"zz"))[122], 2)
        self.assertEqual(byte_histogram(memoryview(b"zz"))[122], 2)

    def test_entropy(self):
        self.assertEqual(entropy(b""), 0.0)
        self.assertEqual(entropy(b"aaaa"), 0.0)
        self.assertEqual(entropy(b"ab"), 1.0)
        self.assertEqual(entropy(bytes(range(256))), 8.0)

    def test_checksum(self):
        self.assertEqual(checksum16(b""), 0)
        self.assertEqual(checksum16(b"\xff" * 300), (255 * 300) % 65536)

    def test_lines(self):
        self.assertEqual(count_lines(b""), 0)
        self.assertEqual(count_lines(b"a"), 1)
        self.assertEqual(count_lines(b"a\nb\n"), 2)
        self.assertEqual(count_lines(b"a\nb"), 2)
        self.assertEqual(count_lines(b"\n\n"), 2)

    def test_printable(self):
        self.assertEqual(printable_ratio(b""), 0.0)
        self.assertEqual(printable_ratio(b"ab\t\x00"), 0.75)
        self.assertEqual(printable_ratio(b"\x7f~ \x1f"), 0.5)

    def test_hex(self):
        self.assertEqual(to_hex(b""), "")
        self.assertEqual(to_hex(b"\x00\xab\xff"), "00abff")
        self.assertEqual(to_hex(b"\x01\x02", sep=":"), "01:02")
        self.assertEqual(to_hex(bytearray(b"\x10")), "10")

    def test_random_against_reference(self):
        rng = random.Random(9)
        for n in (1, 7, 1000, 4096):
            data = rng.randbytes(n)
            hist = [data.count(bytes([b])) for b in range(256)]
            self.assertEqual(byte_histogram(data), hist)
            self.assertEqual(checksum16(data), sum(data) % 65536)
            self.assertEqual(to_hex(data, "-"), "-".join(f"{b:02x}" for b in data))
            ent = -sum(c / n * math.log2(c / n) for c in hist if c)
            self.assertAlmostEqual(entropy(data), ent, places=12)

    def test_describe(self):
        self.assertEqual(describe(b"hello\nworld\n"), {
            "size": 12, "entropy": round(entropy(b"hello\nworld\n"), 6), "checksum16": 1104,
            "lines": 2, "printable": 1.0, "distinct": 8,
        })


if __name__ == "__main__":
    unittest.main()
