"""Running medians of a stream."""


def running_medians(values):
    """The median of values[: i + 1] for each i (lower median for even counts)."""
    seen = []
    out = []
    for v in values:
        seen.append(v)
        ordered = sorted(seen)
        out.append(ordered[(len(ordered) - 1) // 2])
    return out
