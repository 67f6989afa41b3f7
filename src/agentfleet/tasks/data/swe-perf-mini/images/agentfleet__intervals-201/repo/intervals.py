"""Interval merging."""


def merge(intervals):
    """Merge overlapping closed intervals; the result is sorted."""
    merged = []
    for lo, hi in intervals:
        merged.append([lo, hi])
        changed = True
        while changed:
            changed = False
            for i in range(len(merged)):
                for j in range(i + 1, len(merged)):
                    a, b = merged[i], merged[j]
                    if a[0] <= b[1] and b[0] <= a[1]:
                        merged[i] = [min(a[0], b[0]), max(a[1], b[1])]
                        del merged[j]
                        changed = True
                        break
                if changed:
                    break
    return sorted(tuple(m) for m in merged)
