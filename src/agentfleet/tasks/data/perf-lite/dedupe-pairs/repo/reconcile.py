"""Ledger reconciliation: pair up entries that cancel each other out.

An entry cancels another when both are on the same account and their amounts
are exact opposites (a debit of 12.50 and a credit of -12.50).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    ref: str
    account: str
    cents: int


def to_cents(text):
    """Parse a decimal amount such as ``-12.5`` or ``+3.07`` into integer cents."""
    text = text.strip()
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("+-")
    whole, _, frac = text.partition(".")
    if len(frac) > 2:
        raise ValueError(f"too many decimals in amount {text!r}")
    frac = (frac + "00")[:2]
    return sign * (int(whole or "0") * 100 + int(frac))


def parse_entries(lines):
    """Parse ``ref,account,amount`` lines; blank lines and ``#`` comments are skipped."""
    entries = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        ref, account, amount = (part.strip() for part in line.split(","))
        entries.append(Entry(ref, account, to_cents(amount)))
    return entries


def cancelling_pairs(entries):
    """Greedily pair entries that cancel out.

    Entries are visited in order; each unmatched, non-zero entry is paired with
    the earliest later unmatched entry on the same account with the opposite
    amount. Returns ``(i, j)`` index pairs with ``i < j``, in increasing ``i``.
    """
    used = set()
    pairs = []
    for i, a in enumerate(entries):
        if i in used or a.cents == 0:
            continue
        for j in range(i + 1, len(entries)):
            if j in used:
                continue
            b = entries[j]
            if b.account == a.account and b.cents == -a.cents:
                used.add(i)
                used.add(j)
                pairs.append((i, j))
                break
    return pairs


def open_items(entries, pairs=None):
    """Entries left unmatched after pairing, in their original order."""
    if pairs is None:
        pairs = cancelling_pairs(entries)
    matched = {k for pair in pairs for k in pair}
    return [e for k, e in enumerate(entries) if k not in matched]


def balance_by_account(entries):
    """Net balance in cents per account, accounts sorted by name."""
    totals = {}
    for e in entries:
        totals[e.account] = totals.get(e.account, 0) + e.cents
    return dict(sorted(totals.items()))
