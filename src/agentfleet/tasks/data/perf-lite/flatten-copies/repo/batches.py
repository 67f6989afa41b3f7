"""Helpers for lists of record batches."""

from __future__ import annotations


def flatten(batches):
    """All records of all batches, in order, as a new list."""
    out = []
    for batch in batches:
        out = out + list(batch)
    return out


def chunked(records, size):
    """Split ``records`` into lists of ``size`` items (the last one may be shorter)."""
    if size <= 0:
        raise ValueError("size must be positive")
    rest = list(records)
    chunks = []
    while rest:
        chunks.append(rest[:size])
        rest = rest[size:]
    return chunks


def interleave(*streams):
    """Round-robin merge: first items of every stream, then second items, ..."""
    iterators = [iter(s) for s in streams]
    out = []
    while iterators:
        alive = []
        for it in iterators:
            for item in it:
                out.append(item)
                alive.append(it)
                break
        iterators = alive
    return out


def rebatch(batches, size):
    """Re-cut a list of unevenly sized batches into batches of ``size`` records."""
    return chunked(flatten(batches), size)
