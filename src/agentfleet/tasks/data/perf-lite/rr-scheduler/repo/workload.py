"""Simulate a large batch of jobs and print a summary line."""

import hashlib
import random

from scheduler import mean_turnaround, parse_jobs, simulate, slowest


def make_lines(n, seed=11):
    rng = random.Random(seed)
    lines = ["# name:work"]
    for k in range(n):
        work = 0 if rng.random() < 0.02 else rng.randint(1, 48)
        lines.append(f"job{k:06d}:{work}")
    return lines


def main():
    jobs = parse_jobs(make_lines(32000))
    schedule = simulate(jobs, quantum=4)
    digest = hashlib.sha256(repr(sorted(schedule.finish.items())).encode()).hexdigest()[:16]
    print(
        f"jobs={len(jobs)} slices={schedule.slices} makespan={schedule.makespan} "
        f"mean_turnaround={mean_turnaround(schedule):.3f} slowest={','.join(slowest(schedule))} "
        f"finish_sha={digest}"
    )


if __name__ == "__main__":
    main()
