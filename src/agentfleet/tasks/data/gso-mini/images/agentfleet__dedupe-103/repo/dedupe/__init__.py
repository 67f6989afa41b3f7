"""Order-keeping de-duplication."""


def dedupe(items):
    """items without repeats, first occurrences in order."""
    out = []
    for x in items:
        if x not in out:
            out.append(x)
    return out
