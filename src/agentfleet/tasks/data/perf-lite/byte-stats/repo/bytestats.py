"""Statistics over binary data (``bytes``-like objects)."""

from __future__ import annotations

import math


def byte_histogram(data):
    """A list of 256 counts: how often each byte value occurs."""
    counts = [0] * 256
    for b in data:
        counts[b] += 1
    return counts


def entropy(data):
    """Shannon entropy in bits per byte (0.0 for empty data)."""
    n = len(data)
    if n == 0:
        return 0.0
    total = 0.0
    for c in byte_histogram(data):
        if c:
            p = c / n
            total -= p * math.log2(p)
    return total


def checksum16(data):
    """Sum of all byte values modulo 65536."""
    total = 0
    for b in data:
        total = (total + b) & 0xFFFF
    return total


def count_lines(data):
    """Number of ``\n`` bytes, plus one if the data does not end with one (0 for empty data)."""
    count = 0
    for b in data:
        if b == 10:
            count += 1
    if data and data[-1] != 10:
        count += 1
    return count


def printable_ratio(data):
    """Share of bytes that are printable ASCII (32..126) or tab/newline/carriage return."""
    if not data:
        return 0.0
    printable = 0
    for b in data:
        if 32 <= b <= 126 or b in (9, 10, 13):
            printable += 1
    return printable / len(data)


def to_hex(data, sep=""):
    """Lower-case hex encoding, with ``sep`` between bytes."""
    parts = []
    for b in data:
        parts.append("0123456789abcdef"[b >> 4] + "0123456789abcdef"[b & 15])
    return sep.join(parts)


def describe(data):
    """All statistics in one dict."""
    return {
        "size": len(data),
        "entropy": round(entropy(data), 6),
        "checksum16": checksum16(data),
        "lines": count_lines(data),
        "printable": round(printable_ratio(data), 6),
        "distinct": sum(1 for c in byte_histogram(data) if c),
    }
