"""Histograms of small integers."""


def histogram(values):
    """{value: count}, keys in increasing order."""
    return {v: values.count(v) for v in sorted(set(values))}
