"""Quote a batch of synthetic orders and print the totals."""

import random
from pathlib import Path

from pricing import quote

CATALOG = Path(__file__).parent / "data" / "catalog.json"


def main():
    rng = random.Random(99)
    skus = [f"P{k:04d}" for k in range(600)]
    grand = 0
    for n in range(3):
        order = [(rng.choice(skus), rng.choice([1, 2, 5, 12, 60, 250])) for _ in range(110)]
        result = quote(CATALOG, order)
        grand += result["total"]
        print(f"order {n}: lines={result['lines']} net={result['net']} tax={result['tax']} "
              f"total={result['total']} {result['currency']}")
    print(f"grand total={grand}")


if __name__ == "__main__":
    main()
