"""Diff two large synthetic inventory snapshots and print a summary."""

import hashlib
import random

from inventory import added, diff_report, kept, load_skus, removed


def snapshot(rng, pool, n):
    lines = []
    for _ in range(n):
        sku = rng.choice(pool)
        if rng.random() < 0.2:
            sku = " " + sku.lower() + " "
        lines.append(sku)
    return lines


def main():
    rng = random.Random(3)
    pool = [f"AB-{rng.randrange(10**6):06d}-{rng.choice('XYZ')}" for _ in range(5400)]
    old = load_skus(snapshot(rng, pool[:4200], 3600))
    new = load_skus(snapshot(rng, pool[1200:], 3600))
    plus, minus, same = added(old, new), removed(old, new), kept(old, new)
    h = hashlib.sha256(repr((plus, minus, same)).encode()).hexdigest()[:16]
    first = diff_report(old, new, limit=1).splitlines()
    print(f"old={len(old)} new={len(new)} {first[0]} sha={h} | {' | '.join(first[1:])}")


if __name__ == "__main__":
    main()
