"""Timing a workload inside sandboxes and the statistics of the samples.

The statistics (:func:`median`, :func:`iqr`, :func:`paired_speedup`,
:func:`bootstrap_ratio_ci`, :func:`paired_t_ratio_ci`, :func:`speedup_stats`) are pure
functions. :func:`measure` runs the interleaved timing rounds; :func:`run_checked` runs a
workload once and reports its stdout digest for the output comparison. See
docs/evaluation.md for the method.
"""

from __future__ import annotations

import json
import math
import random
import shlex
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from agentfleet.sandbox.base import Sandboxes
from agentfleet.tasks.defaults import DEFAULT_EVAL_REPEATS

TIME_MARKER = "AGENTFLEET_TIME"
OUT_MARKER = "AGENTFLEET_OUT"
RUN_MARKER = "AGENTFLEET_RUN"

# Runs the workload as a fresh shell process and times it from inside the sandbox, so the
# cost of reaching the sandbox (HTTP, docker exec) is not part of the sample.
# With a second argument, the workload's stdout (its last 64 KiB) is printed first, as one
# JSON line, for a workload that reports its own times (workload_parsers.py).
_TIMER_SCRIPT = """\
import json, resource, subprocess, sys, time
out = subprocess.PIPE if len(sys.argv) > 2 else subprocess.DEVNULL
t = time.perf_counter()
r = subprocess.run(sys.argv[1], shell=True, stdout=out, stderr=subprocess.DEVNULL)
e = time.perf_counter() - t
u = resource.getrusage(resource.RUSAGE_CHILDREN)
if r.stdout is not None:
    print("AGENTFLEET_OUT " + json.dumps(r.stdout[-65536:].decode("utf-8", "replace")))
print("AGENTFLEET_TIME", repr(e), r.returncode, repr(u.ru_utime + u.ru_stime))
"""

# Runs the workload once and reports a digest of its stdout (the whole stdout is compared
# through the digest, so the sandbox's output truncation cannot hide a difference).
# With a second argument (a regex), the lines it matches are left out of the digest: the
# times a workload prints itself differ from run to run.
_RUN_SCRIPT = """\
import hashlib, json, re, subprocess, sys
r = subprocess.run(sys.argv[1], shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
o = r.stdout
if len(sys.argv) > 2:
    skip = re.compile(sys.argv[2].encode())
    o = b"".join(x for x in o.splitlines(True) if not skip.search(x))
print("AGENTFLEET_RUN " + json.dumps({
    "returncode": r.returncode,
    "sha256": hashlib.sha256(o).hexdigest(),
    "bytes": len(o),
    "head": o[:2000].decode("utf-8", "replace"),
    "stderr_tail": r.stderr[-2000:].decode("utf-8", "replace"),
}))
"""


class TimingError(Exception):
    """A timed run failed: ``arm`` names the sandbox, ``detail`` says how."""

    def __init__(self, arm: str, detail: str) -> None:
        super().__init__(f"{arm}: {detail}")
        self.arm = arm
        self.detail = detail


# ---------------------------------------------------------------- pure statistics


def median(xs: Sequence[float]) -> float:
    """The median; the mean of the two middle values for an even count."""
    if not xs:
        raise ValueError("median of no samples")
    s = sorted(xs)
    n = len(s)
    mid = n // 2
    return float(s[mid]) if n % 2 else (s[mid - 1] + s[mid]) / 2.0


def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default ``linear`` method)."""
    if not xs:
        raise ValueError("quantile of no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} outside [0, 1]")
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def iqr(xs: Sequence[float]) -> float:
    """Interquartile range: ``quantile(0.75) - quantile(0.25)``."""
    return quantile(xs, 0.75) - quantile(xs, 0.25)


def ratio_of_medians(baseline: Sequence[float], candidate: Sequence[float]) -> float:
    """``median(baseline) / median(candidate)``: > 1 means the candidate is faster."""
    return median(baseline) / max(median(candidate), 1e-9)


def round_ratios(baseline: Sequence[float], candidate: Sequence[float]) -> list[float]:
    """Each round's ``baseline_i / candidate_i`` (as many samples on each side)."""
    return [b / max(c, 1e-9) for b, c in zip(baseline, candidate, strict=True)]


def paired_speedup(baseline: Sequence[float], candidate: Sequence[float]) -> float:
    """The speedup the evaluator reports: > 1 means the candidate is faster.

    With as many samples on each side (sample ``i`` of both came from one interleaved
    round), the median of the rounds' ratios ``baseline_i / candidate_i``: a slow stretch
    of the host that spans a round (a shared VM was seen running 1.2x to 1.4x slower for up
    to 27 s) slows both of its samples and leaves their ratio alone, where the ratio of the
    two medians mixes rounds run at different speeds. Otherwise :func:`ratio_of_medians`."""
    n = len(baseline)
    if n == 0 or n != len(candidate):
        return ratio_of_medians(baseline, candidate)
    return median(round_ratios(baseline, candidate))


def bootstrap_ratio_ci(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`paired_speedup`, seeded.

    With as many samples on each side, sample ``i`` of both sides came from the same
    interleaved round, so pairs are resampled together (a paired bootstrap): drift that a
    round shares (another job on the machine) cancels out. Otherwise both sides are resampled
    independently with replacement."""
    if not baseline or not candidate:
        raise ValueError("bootstrap of no samples")
    rng = random.Random(seed)
    nb, nc = len(baseline), len(candidate)
    paired = round_ratios(baseline, candidate) if nb == nc else None
    ratios: list[float] = []
    for _ in range(max(resamples, 1)):
        if paired is not None:
            idx = [rng.randrange(nb) for _ in range(nb)]
            ratios.append(median([paired[i] for i in idx]))
        else:
            ratios.append(
                ratio_of_medians(
                    [baseline[rng.randrange(nb)] for _ in range(nb)],
                    [candidate[rng.randrange(nc)] for _ in range(nc)],
                )
            )
    ratios.sort()
    alpha = (1.0 - confidence) / 2.0
    return quantile(ratios, alpha), quantile(ratios, 1.0 - alpha)


# Student's t 97.5% quantiles by degrees of freedom 1..30 (beyond: 1.96 + 2.4 / df, within
# 0.01 of the true value)
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


# Up to this many noise thresholds from 1.0 (1.2x at the default 5%), a gain may be noise
# that favoured one arm in every round (unchanged code read 0.76-1.23 on the wall clock here
# under load): there the paired t-interval must exclude 1.0 too. Beyond, the rounds' spread
# says how large the gain is, not whether there is one (a 4x read as 3.3x and 5.8x in two
# rounds has a t-interval that holds 1.0).
T_GATE_THRESHOLDS = 4.0


def paired_t_ratio_ci(
    baseline: Sequence[float], candidate: Sequence[float]
) -> tuple[float, float] | None:
    """95% interval of the speedup from a paired t-interval on the rounds' log ratios
    ``log(baseline_i / candidate_i)``; None unless paired, with 2 rounds or more.

    It widens as the rounds get fewer, where a percentile bootstrap does not: over 3 rounds
    the bootstrap's interval is about their range, which excludes 1.0 whenever noise
    favours one arm in all three (1 time in 4), so a no-op read as a gain."""
    n = len(baseline)
    if n < 2 or len(candidate) != n:
        return None
    pairs = zip(baseline, candidate, strict=True)
    logs = [math.log(max(b, 1e-12) / max(c, 1e-12)) for b, c in pairs]
    mean = math.fsum(logs) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in logs) / (n - 1))
    df = n - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df
    half = t * sd / math.sqrt(n)
    return math.exp(mean - half), math.exp(mean + half)


def speedup_stats(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    noise_threshold: float = 0.05,
    max_plausible_speedup: float = 10.0,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything the evaluator reports about two sets of wall-time samples.

    ``within_noise``: the bootstrap 95% interval contains 1.0, or ``|speedup - 1| <
    noise_threshold``, or, for an interval whose nearer end lies within
    :data:`T_GATE_THRESHOLDS` noise thresholds of 1.0, the paired t-interval
    (:func:`paired_t_ratio_ci`) contains 1.0. ``suspicious``: ``speedup >
    max_plausible_speedup``.
    """
    s = paired_speedup(baseline, candidate)
    lo, hi = bootstrap_ratio_ci(baseline, candidate, resamples=resamples, seed=seed)
    t_ci = paired_t_ratio_ci(baseline, candidate)
    noise = lo <= 1.0 <= hi or abs(s - 1.0) < noise_threshold
    near = min(abs(math.log(max(lo, 1e-12))), abs(math.log(max(hi, 1e-12))))
    if not noise and t_ci is not None and near < math.log1p(T_GATE_THRESHOLDS * noise_threshold):
        noise = t_ci[0] <= 1.0 <= t_ci[1]
    return {
        "speedup": s,
        "baseline_s": list(baseline),
        "candidate_s": list(candidate),
        "baseline_median_s": median(baseline),
        "candidate_median_s": median(candidate),
        "baseline_iqr_s": iqr(baseline),
        "candidate_iqr_s": iqr(candidate),
        "ci95": [lo, hi],
        "ci95_t": list(t_ci) if t_ci is not None else None,
        "within_noise": bool(noise),
        "suspicious": bool(s > max_plausible_speedup),
    }


# ---------------------------------------------------------------- commands and parsing


def timer_command(workload_cmd: str, python: str = "python3", *, capture: bool = False) -> str:
    """The command that times one fresh run of ``workload_cmd`` inside the sandbox
    (``capture``: also report the end of its stdout)."""
    cmd = f"{python} -c {shlex.quote(_TIMER_SCRIPT)} {shlex.quote(workload_cmd)}"
    return cmd + " capture" if capture else cmd


def run_command(workload_cmd: str, python: str = "python3", *, skip: str | None = None) -> str:
    """The command that runs ``workload_cmd`` once and reports its stdout digest
    (``skip``: a regex of lines left out of it)."""
    cmd = f"{python} -c {shlex.quote(_RUN_SCRIPT)} {shlex.quote(workload_cmd)}"
    return cmd + f" {shlex.quote(skip)}" if skip else cmd


@dataclass(frozen=True)
class TimedRun:
    wall_s: float
    returncode: int
    cpu_s: float
    stdout: str | None = None  # with capture: the end of the workload's stdout
    metrics: dict[str, float] | None = None  # measure's ``parse`` of it


def _captured(output: str) -> str | None:
    for line in reversed(output.splitlines()):
        if line.startswith(OUT_MARKER + " "):
            try:
                text = json.loads(line[len(OUT_MARKER) + 1 :])
            except ValueError:
                return None
            return text if isinstance(text, str) else None
    return None


def parse_timer_output(output: str) -> TimedRun:
    """Find the ``AGENTFLEET_TIME <wall> <rc> <cpu>`` line (the last one wins)."""
    for line in reversed(output.splitlines()):
        parts = line.split()
        if len(parts) >= 3 and parts[0] == TIME_MARKER:
            try:
                cpu = float(parts[3]) if len(parts) > 3 else float("nan")
                return TimedRun(float(parts[1]), int(parts[2]), cpu, _captured(output))
            except ValueError:
                break
    raise ValueError(f"no {TIME_MARKER} line in timer output: {output[-500:]!r}")


@dataclass(frozen=True)
class CheckedRun:
    returncode: int
    sha256: str
    bytes: int
    head: str
    stderr_tail: str


def parse_run_output(output: str) -> CheckedRun:
    for line in reversed(output.splitlines()):
        if line.startswith(RUN_MARKER + " "):
            d = json.loads(line[len(RUN_MARKER) + 1 :])
            return CheckedRun(
                returncode=int(d["returncode"]),
                sha256=str(d["sha256"]),
                bytes=int(d["bytes"]),
                head=str(d["head"]),
                stderr_tail=str(d["stderr_tail"]),
            )
    raise ValueError(f"no {RUN_MARKER} line in output: {output[-500:]!r}")


# ---------------------------------------------------------------- running


async def run_checked(
    sandboxes: Sandboxes,
    sandbox_id: str,
    workload_cmd: str,
    *,
    run_timeout: float,
    python: str = "python3",
    skip: str | None = None,
) -> CheckedRun:
    """Run the workload once (also the first warm-up) and return its stdout digest
    (``skip``: a regex of lines left out of it).

    A run that times out or whose report cannot be read comes back with returncode -1."""
    cmd = run_command(workload_cmd, python, skip=skip)
    res = await sandboxes.exec(sandbox_id, cmd, timeout=run_timeout)
    if res.timed_out:
        return CheckedRun(-1, "", 0, "", f"timed out after {run_timeout:g} s")
    try:
        return parse_run_output(res.output)
    except (ValueError, KeyError) as exc:
        return CheckedRun(-1, "", 0, "", f"{exc} (exit {res.returncode})")


Order = Literal["alternate", "shuffle"]


def alternate_order(names: Sequence[str], r: int) -> list[str]:
    """Round ``r``'s arm order for ``alternate``: with two arms A B, B A, A B, ...; with
    more, rotated every two rounds and reversed every other round (A B C, C B A, B C A,
    A C B, C A B, B A C, ...), so that no arm keeps one position (a middle arm would always
    run right after another)."""
    n = len(names)
    shift = 0 if n <= 2 else (r // 2) % n
    rotated = [*names[shift:], *names[:shift]]
    return rotated if r % 2 == 0 else rotated[::-1]


@dataclass
class Samples:
    wall_s: dict[str, list[float]] = field(default_factory=dict)
    cpu_s: dict[str, list[float]] = field(default_factory=dict)
    order: list[list[str]] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # optional arm -> why it failed
    # with measure's ``parse``: per arm, each round's seconds per metric
    metrics: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    stopped_early: bool = False  # measure's ``decided`` ended the rounds before ``repeats``


async def measure(
    sandboxes: Sandboxes,
    arms: Mapping[str, str],
    workload_cmd: str,
    *,
    repeats: int = DEFAULT_EVAL_REPEATS,
    warmup: int = 0,
    run_timeout: float = 120.0,
    order: Order = "alternate",
    seed: int = 0,
    python: str = "python3",
    optional: Collection[str] = (),
    more: Callable[[Samples], Awaitable[bool]] | None = None,
    max_repeats: int | None = None,
    parse: Callable[[str, float], dict[str, float]] | None = None,
    decided: Callable[[Samples], Awaitable[bool]] | None = None,
    decide_after: int = 3,
) -> Samples:
    """Time ``workload_cmd`` in each arm (name -> sandbox id), one run at a time.

    ``warmup`` untimed rounds first, then ``repeats`` rounds; in each round every arm runs
    once as a fresh process. ``alternate`` reverses the arm order every other round
    (A B, B A, A B, ...; more arms are also rotated: :func:`alternate_order`); ``shuffle``
    draws each round's order from a seeded generator.
    Raises :class:`TimingError` when a run fails or times out, except in an ``optional``
    arm: that arm is dropped (its samples removed, the reason in ``Samples.dropped``) and
    the others go on. ``more`` (adaptive repeats): after the ``repeats`` rounds, while it
    answers True for the samples so far, two more rounds run, up to ``max_repeats``.
    ``decided`` (early stop): from ``decide_after`` rounds on, while fewer than ``repeats``
    have run, the rounds end as soon as it answers True (``Samples.stopped_early``).
    ``parse`` (a workload that reports its own times): each timed run's stdout and wall
    time -> seconds per metric, kept in ``Samples.metrics``; a ``ValueError`` from it fails
    the run as a :class:`TimingError`.
    """
    names = list(arms)
    rng = random.Random(seed)
    cmd = timer_command(workload_cmd, python, capture=parse is not None)
    out = Samples(wall_s={n: [] for n in names}, cpu_s={n: [] for n in names})
    if parse is not None:
        out.metrics = {n: [] for n in names}

    async def one(name: str) -> TimedRun:
        res = await sandboxes.exec(arms[name], cmd, timeout=run_timeout)
        if res.timed_out:
            raise TimingError(name, f"timed out after {run_timeout:g} s")
        try:
            run = parse_timer_output(res.output)
        except ValueError as exc:
            raise TimingError(name, str(exc)) from None
        if run.returncode != 0:
            raise TimingError(name, f"workload exited with {run.returncode}")
        if parse is not None:
            try:
                return replace(run, metrics=parse(run.stdout or "", run.wall_s))
            except ValueError as exc:
                raise TimingError(name, str(exc)) from None
        return run

    async def run_or_drop(name: str) -> TimedRun | None:
        try:
            return await one(name)
        except TimingError as exc:
            if name not in optional:
                raise
            out.dropped[name] = exc.detail
            names.remove(name)
            del out.wall_s[name], out.cpu_s[name]
            out.metrics.pop(name, None)
            return None

    for _ in range(max(warmup, 0)):
        for name in names[:]:
            await run_or_drop(name)

    async def one_round(r: int) -> None:
        if order == "shuffle":
            round_order = names[:]
            rng.shuffle(round_order)
        else:
            round_order = alternate_order(names, r)
        ran: list[str] = []
        for name in round_order:
            run = await run_or_drop(name)
            if run is None:
                continue
            ran.append(name)
            out.wall_s[name].append(run.wall_s)
            out.cpu_s[name].append(run.cpu_s)
            if run.metrics is not None:
                out.metrics[name].append(run.metrics)
        out.order.append(ran)

    for r in range(repeats):
        await one_round(r)
        if decided is not None and decide_after <= r + 1 < repeats and await decided(out):
            out.stopped_early = True
            return out
    cap = max(repeats, max_repeats or repeats)
    r = repeats
    while more is not None and r < cap and await more(out):
        for _ in range(min(2, cap - r)):
            await one_round(r)
            r += 1
    return out
