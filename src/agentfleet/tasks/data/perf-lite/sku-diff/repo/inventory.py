"""Compare two inventory snapshots (lists of SKU codes)."""

from __future__ import annotations


def normalize_sku(code):
    """Canonical form of a SKU: trimmed, upper case, inner spaces and dashes removed."""
    return code.strip().upper().replace(" ", "").replace("-", "")


def load_skus(lines):
    """Normalised SKUs from text lines, skipping blank lines and ``#`` comments.

    Duplicates are kept: a snapshot may list the same SKU more than once.
    """
    skus = []
    for line in lines:
        line = line.split("#", 1)[0]
        if line.strip():
            skus.append(normalize_sku(line))
    return skus


def added(old, new):
    """SKUs present in ``new`` but not in ``old``, once each, in ``new`` order."""
    result = []
    for sku in new:
        if sku not in old and sku not in result:
            result.append(sku)
    return result


def removed(old, new):
    """SKUs present in ``old`` but not in ``new``, once each, in ``old`` order."""
    return added(new, old)


def kept(old, new):
    """SKUs present in both snapshots, once each, in ``old`` order."""
    result = []
    for sku in old:
        if sku in new and sku not in result:
            result.append(sku)
    return result


def diff_report(old, new, limit=5):
    """A short human-readable summary of the differences."""
    plus, minus, same = added(old, new), removed(old, new), kept(old, new)
    lines = [f"added {len(plus)}, removed {len(minus)}, kept {len(same)}"]
    lines += [f"+ {sku}" for sku in plus[:limit]]
    lines += [f"- {sku}" for sku in minus[:limit]]
    return "\n".join(lines)
