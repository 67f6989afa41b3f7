import json
import tempfile
import unittest
from pathlib import Path

from pricing import discount_bp, line_total, load_catalog, quote, tax_rate, unit_price

CATALOG = {
    "currency": "USD",
    "tax_bp": {"standard": 2000, "reduced": 550},
    "volume_discounts": [[10, 300], [100, 1000]],
    "items": [
        {"sku": "A", "price_cents": 1999, "tax": "standard"},
        {"sku": "B", "price_cents": 250, "tax": "reduced"},
    ],
}


class PricingTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.path = Path(self.tmp.name) / "catalog.json"
        self.path.write_text(json.dumps(CATALOG))

    def tearDown(self):
        self.tmp.cleanup()

    def test_lookups(self):
        self.assertEqual(load_catalog(self.path), CATALOG)
        self.assertEqual(unit_price(self.path, "A"), 1999)
        self.assertEqual(tax_rate(self.path, "B"), 550)
        self.assertEqual([discount_bp(self.path, q) for q in (1, 10, 99, 100)], [0, 300, 300, 1000])
        with self.assertRaises(KeyError):
            unit_price(self.path, "nope")

    def test_line_total_rounding(self):
        # 3 x 19.99 = 59.97, no discount; tax 20 % = 11.994 -> 11.99
        self.assertEqual(line_total(self.path, "A", 3), (5997, 1199))
        # 10 x 2.50 = 25.00, 3 % off = 24.25; tax 5.5 % = 1.33375 -> 1.33
        self.assertEqual(line_total(self.path, "B", 10), (2425, 133))
        with self.assertRaises(ValueError):
            line_total(self.path, "A", 0)

    def test_quote(self):
        result = quote(self.path, [("A", 3), ("B", 10), ("B", 100)])
        self.assertEqual(result, {
            "currency": "USD", "lines": 3, "net": 5997 + 2425 + 22500,
            "tax": 1199 + 133 + 1238, "total": 5997 + 2425 + 22500 + 1199 + 133 + 1238,
        })

    def test_unknown_sku_in_quote(self):
        with self.assertRaises(KeyError):
            quote(self.path, [("A", 1), ("Z", 1)])

    def test_empty_quote(self):
        self.assertEqual(quote(self.path, [])["total"], 0)

    def test_catalog_changes_are_picked_up(self):
        self.assertEqual(quote(self.path, [("A", 1)])["net"], 1999)
        changed = json.loads(json.dumps(CATALOG))
        changed["items"][0]["price_cents"] = 123456
        self.path.write_text(json.dumps(changed))
        self.assertEqual(unit_price(self.path, "A"), 123456)
        self.assertEqual(quote(self.path, [("A", 1)])["net"], 123456)

    def test_each_path_is_its_own_catalog(self):
        other = Path(self.tmp.name) / "other.json"
        other.write_text(json.dumps({**CATALOG, "currency": "EUR", "items": [
            {"sku": "A", "price_cents": 100, "tax": "reduced"}]}))
        self.assertEqual(unit_price(other, "A"), 100)
        self.assertEqual(unit_price(self.path, "A"), 1999)
        self.assertEqual(quote(other, [("A", 1)])["currency"], "EUR")
        self.assertEqual(quote(self.path, [("A", 1)])["currency"], "USD")


if __name__ == "__main__":
    unittest.main()
