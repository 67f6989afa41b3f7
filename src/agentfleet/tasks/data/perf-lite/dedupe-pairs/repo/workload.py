"""Reconcile a synthetic ledger and print a summary line."""

import hashlib
import random

from reconcile import balance_by_account, cancelling_pairs, open_items, parse_entries


def fmt(cents):
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def make_lines(n, seed=7):
    rng = random.Random(seed)
    accounts = [f"ACC{k:03d}" for k in range(40)]
    seen = []
    lines = ["# ref,account,amount"]
    for k in range(n):
        if seen and rng.random() < 0.3:
            acct, cents = rng.choice(seen)
            cents = -cents
        else:
            acct, cents = rng.choice(accounts), rng.randint(-50000, 50000)
        seen.append((acct, cents))
        lines.append(f"T{k:06d},{acct},{fmt(cents)}")
    return lines


def main():
    entries = parse_entries(make_lines(6500))
    pairs = cancelling_pairs(entries)
    rest = open_items(entries, pairs)
    digest = hashlib.sha256(repr(pairs).encode()).hexdigest()[:16]
    balances = balance_by_account(entries)
    print(
        f"entries={len(entries)} pairs={len(pairs)} pairs_sha={digest} "
        f"open={len(rest)} open_sum={sum(e.cents for e in rest)} "
        f"accounts={len(balances)} balance_sha="
        f"{hashlib.sha256(repr(balances).encode()).hexdigest()[:16]}"
    )


if __name__ == "__main__":
    main()
