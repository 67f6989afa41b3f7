"""Round-robin CPU scheduling simulation."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Job:
    name: str
    work: int


@dataclass
class Schedule:
    finish: dict = field(default_factory=dict)  # job name -> clock tick at which it finished
    slices: int = 0  # number of time slices handed out
    makespan: int = 0  # clock when the last job finished


def parse_jobs(lines):
    """Parse ``name:work`` lines (blank lines and ``#`` comments are ignored)."""
    jobs = []
    names = set()
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, work = line.partition(":")
        name = name.strip()
        if not name or name in names:
            raise ValueError(f"missing or duplicate job name in line {line!r}")
        work = int(work)
        if work < 0:
            raise ValueError(f"negative work for job {name!r}")
        names.add(name)
        jobs.append(Job(name, work))
    return jobs


def simulate(jobs, quantum=4):
    """Run ``jobs`` round-robin, in the given order, ``quantum`` ticks at a time.

    Jobs with no work finish at tick 0 without using a slice.
    """
    if quantum <= 0:
        raise ValueError("quantum must be positive")
    schedule = Schedule()
    queue = []
    for job in jobs:
        if job.work == 0:
            schedule.finish[job.name] = 0
        else:
            queue.append((job.name, job.work))
    clock = 0
    while queue:
        name, remaining = queue.pop(0)
        run = min(quantum, remaining)
        clock += run
        remaining -= run
        schedule.slices += 1
        if remaining:
            queue.append((name, remaining))
        else:
            schedule.finish[name] = clock
    schedule.makespan = clock
    return schedule


def mean_turnaround(schedule):
    """Average finish time over all jobs (all jobs arrive at tick 0)."""
    if not schedule.finish:
        return 0.0
    return sum(schedule.finish.values()) / len(schedule.finish)


def slowest(schedule, k=3):
    """The ``k`` jobs that finished last, latest first (ties broken by name)."""
    ranked = sorted(schedule.finish.items(), key=lambda item: (-item[1], item[0]))
    return [name for name, _ in ranked[:k]]
