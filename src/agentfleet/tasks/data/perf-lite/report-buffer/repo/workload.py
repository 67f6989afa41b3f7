"""Render a large synthetic sales report and print its size and digest."""

import hashlib
import random

from report import TableWriter


def main():
    rng = random.Random(8)
    regions = ["north", "south", "east", "west", "central"]
    writer = TableWriter(["id", "region", "product", "units", "revenue", "promo"],
                         widths=[7, 8, 14, 6, 11, 5])
    writer.header()
    total = 0.0
    for k in range(10000):
        units = rng.randint(1, 500)
        revenue = units * rng.uniform(0.5, 80.0)
        total += revenue
        product = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 18)))
        writer.row([k, rng.choice(regions), product, units, revenue, rng.random() < 0.1])
    writer.footer(f"{writer.rows} rows, revenue {total:.2f}")
    text = writer.getvalue()
    print(f"rows={writer.rows} chars={len(text)} lines={text.count(chr(10))} "
          f"sha256={hashlib.sha256(text.encode()).hexdigest()[:24]}")


if __name__ == "__main__":
    main()
