"""Price orders from a JSON catalog.

Money is in integer cents; discounts and tax rates are in basis points
(1 bp = 0.01 %). Every function takes the catalog's file path.
"""

from __future__ import annotations

import json


def load_catalog(path):
    """Read and parse the catalog file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _item(path, sku):
    for item in load_catalog(path)["items"]:
        if item["sku"] == sku:
            return item
    raise KeyError(f"unknown sku {sku!r}")


def unit_price(path, sku):
    """List price of one unit, in cents."""
    return _item(path, sku)["price_cents"]


def tax_rate(path, sku):
    """Tax rate for ``sku`` in basis points."""
    catalog = load_catalog(path)
    return catalog["tax_bp"][_item(path, sku)["tax"]]


def discount_bp(path, qty):
    """Volume discount for ``qty`` units, in basis points (the best tier reached)."""
    best = 0
    for min_qty, bp in load_catalog(path)["volume_discounts"]:
        if qty >= min_qty:
            best = max(best, bp)
    return best


def line_total(path, sku, qty):
    """``(net, tax)`` in cents for ``qty`` units of ``sku``, discount applied, rounded half up."""
    if qty <= 0:
        raise ValueError("quantity must be positive")
    gross = unit_price(path, sku) * qty
    net = (gross * (10000 - discount_bp(path, qty)) + 5000) // 10000
    tax = (net * tax_rate(path, sku) + 5000) // 10000
    return net, tax


def quote(path, order):
    """Totals for ``order``, a list of ``(sku, qty)`` pairs."""
    net_total = tax_total = 0
    for sku, qty in order:
        net, tax = line_total(path, sku, qty)
        net_total += net
        tax_total += tax
    return {
        "currency": load_catalog(path)["currency"],
        "lines": len(order),
        "net": net_total,
        "tax": tax_total,
        "total": net_total + tax_total,
    }
