"""Moving averages."""


def moving_average(values, window):
    """Mean of each full window of values, in order."""
    return [sum(values[i : i + window]) / window for i in range(len(values) - window + 1)]
