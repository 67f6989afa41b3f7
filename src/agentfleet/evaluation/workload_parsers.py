"""What one timed run of a workload measured, read from its output by a named parser.

A task's ``workload_parser`` says how its workload reports time:

* ``wall``: the whole process, timed from outside (agentfleet's own tasks);
* ``gso``: GSO's timing scripts print ``Execution time: 0.123456s``, one line per test
  (the metrics are ``t0``, ``t1``... in the order printed);
* ``pytest``: the ``call`` durations of named tests from ``pytest --durations=0 -vv``
  (``0.52s call     tests/test_x.py::test_y``), one metric per node id;
* ``mean``: SWE-fficiency's workloads print ``Mean: X`` and ``Std Dev: Y``; the metric is
  ``mean`` (the standard deviation is kept beside it, not compared).

:func:`parse_workload_output` returns seconds per metric, or raises
:class:`WorkloadParseError` (a ``ValueError``) naming the parser and quoting the end of the
output: junk never crashes the caller, it ends the evaluation with a status.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field

__all__ = [
    "PARSERS",
    "WorkloadParseError",
    "WorkloadTimes",
    "parse_workload_output",
]

PARSERS: tuple[str, ...] = ("wall", "gso", "pytest", "mean")

_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"
_GSO = re.compile(r"^\s*Execution time:\s*" + _NUMBER + r"\s*s?\s*$", re.IGNORECASE)
_PYTEST = re.compile(r"^\s*" + _NUMBER + r"s\s+(setup|call|teardown)\s+(\S.*?)\s*$")
_MEAN = re.compile(r"^\s*Mean:\s*" + _NUMBER + r"\s*$", re.IGNORECASE)
_STD = re.compile(r"^\s*Std Dev:\s*" + _NUMBER + r"\s*$", re.IGNORECASE)


class WorkloadParseError(ValueError):
    """The workload's output does not hold what its parser looks for."""


@dataclass(frozen=True)
class WorkloadTimes:
    """Seconds per metric of one run (compared across arms); ``extra``: other figures the
    output gave (SWE-fficiency's ``std``), reported only."""

    times: dict[str, float]
    extra: dict[str, float] = field(default_factory=dict)


def _tail(output: str, n: int = 300) -> str:
    return output[-n:] if output else "(no output)"


def _seconds(text: str, parser: str, line: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise WorkloadParseError(f"{parser} parser: not a time in seconds: {line.strip()!r}")
    return value


def _gso(output: str) -> WorkloadTimes:
    times: dict[str, float] = {}
    for line in output.splitlines():
        m = _GSO.match(line)
        if m:
            times[f"t{len(times)}"] = _seconds(m.group(1), "gso", line)
    if not times:
        raise WorkloadParseError(
            f"gso parser: no 'Execution time: X' line in the workload output: {_tail(output)!r}"
        )
    return WorkloadTimes(times)


def _pytest(output: str, names: Collection[str]) -> WorkloadTimes:
    found: dict[str, float] = {}
    for line in output.splitlines():
        m = _PYTEST.match(line)
        if m and m.group(2) == "call":
            found[m.group(3)] = _seconds(m.group(1), "pytest", line)
    if not found:
        raise WorkloadParseError(
            "pytest parser: no test durations in the output (run pytest with "
            f"--durations=0 -vv): {_tail(output)!r}"
        )
    if not names:
        return WorkloadTimes(found)
    missing = [n for n in names if n not in found]
    if missing:
        raise WorkloadParseError(
            f"pytest parser: no duration for {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} (have {len(found)} others)"
        )
    return WorkloadTimes({n: found[n] for n in names})


def _mean(output: str) -> WorkloadTimes:
    mean: float | None = None
    extra: dict[str, float] = {}
    for line in output.splitlines():  # the last line of each kind wins
        if m := _MEAN.match(line):
            mean = _seconds(m.group(1), "mean", line)
        elif m := _STD.match(line):
            extra["std"] = _seconds(m.group(1), "mean", line)
    if mean is None:
        raise WorkloadParseError(f"mean parser: no 'Mean: X' line in the output: {_tail(output)!r}")
    return WorkloadTimes({"mean": mean}, extra)


def parse_workload_output(
    parser: str, output: str, *, wall_s: float, names: Collection[str] = ()
) -> WorkloadTimes:
    """The times one run reported (see the module doc). ``wall_s``: the run's whole-process
    time (the ``wall`` parser's only metric); ``names``: for ``pytest``, the node ids to
    keep (each must be there; empty: every test that has a call duration)."""
    if parser == "wall":
        return WorkloadTimes({"wall": _seconds(repr(float(wall_s)), "wall", str(wall_s))})
    if parser == "gso":
        return _gso(output)
    if parser == "pytest":
        return _pytest(output, names)
    if parser == "mean":
        return _mean(output)
    raise WorkloadParseError(f"unknown workload parser {parser!r}: one of {', '.join(PARSERS)}")
