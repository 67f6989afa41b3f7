import random
import unittest

from reconcile import (
    Entry,
    balance_by_account,
    cancelling_pairs,
    open_items,
    parse_entries,
    to_cents,
)


def naive_pairs(entries):
    used = set()
    pairs = []
    for i, a in enumerate(entries):
        if i in used or a.cents == 0:
            continue
        for j in range(i + 1, len(entries)):
            b = entries[j]
            if j not in used and b.account == a.account and b.cents == -a.cents:
                used.update((i, j))
                pairs.append((i, j))
                break
    return pairs


def E(account, cents, ref="x"):
    return Entry(ref, account, cents)


class ToCentsTest(unittest.TestCase):
    def test_amounts(self):
        self.assertEqual(to_cents("12.50"), 1250)
        self.assertEqual(to_cents("-0.05"), -5)
        self.assertEqual(to_cents("+3.7"), 370)
        self.assertEqual(to_cents("8"), 800)

    def test_too_many_decimals(self):
        with self.assertRaises(ValueError):
            to_cents("1.234")


class ParseTest(unittest.TestCase):
    def test_skips_blank_and_comments(self):
        entries = parse_entries(["# header", "", " A1 , cash , -2.5 ", "A2,bank,1"])
        self.assertEqual(entries, [Entry("A1", "cash", -250), Entry("A2", "bank", 100)])


class PairsTest(unittest.TestCase):
    def test_simple(self):
        self.assertEqual(cancelling_pairs([E("a", 5), E("a", -5)]), [(0, 1)])

    def test_other_account_not_paired(self):
        self.assertEqual(cancelling_pairs([E("a", 5), E("b", -5)]), [])

    def test_zero_never_paired(self):
        self.assertEqual(cancelling_pairs([E("a", 0), E("a", 0)]), [])

    def test_earliest_partner_and_single_use(self):
        entries = [E("a", 5), E("a", 5), E("a", -5), E("a", -5), E("a", -5)]
        self.assertEqual(cancelling_pairs(entries), [(0, 2), (1, 3)])

    def test_partner_must_come_later(self):
        entries = [E("a", -5), E("a", 5), E("a", -5)]
        self.assertEqual(cancelling_pairs(entries), [(0, 1)])

    def test_matches_reference_on_random_ledgers(self):
        rng = random.Random(1234)
        for _ in range(60):
            entries = [
                E(rng.choice("abc"), rng.choice([-3, -2, -1, 0, 1, 2, 3]))
                for _ in range(rng.randint(0, 40))
            ]
            self.assertEqual(cancelling_pairs(entries), naive_pairs(entries))

    def test_open_items_and_balance(self):
        entries = [E("b", 7), E("a", 5), E("a", -5), E("b", 2)]
        self.assertEqual(open_items(entries), [E("b", 7), E("b", 2)])
        self.assertEqual(list(balance_by_account(entries).items()), [("a", 0), ("b", 9)])


if __name__ == "__main__":
    unittest.main()
