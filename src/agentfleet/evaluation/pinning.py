"""Pinned evaluation workers: each worker owns a disjoint CPU set for the commands it runs.

:func:`plan_cpu_sets` splits the CPUs this process may use (``sched_getaffinity``) into
one set per worker. A worker sets :data:`worker_cpus` (a context variable, so every task
the evaluation starts inherits it) and :class:`PinnedSandboxes` prefixes each command it
sends with ``taskset -cp CPUS $$``: the sandbox's shell pins itself, so the command and
every process it starts run on those CPUs only. It is plain text inside the command, so it
works the same on the process backend (bubblewrap or not) and inside a docker container
(``taskset`` is util-linux's, in every Debian-based image).
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentfleet.sandbox.base import CreateSandbox, ExecResult, Sandboxes, SandboxInfo

log = logging.getLogger("agentfleet.evaluation")

CpuSet = tuple[int, ...]
PIN_FAILED_EXIT = 125  # the command's exit status when its shell could not pin itself

worker_cpus: contextvars.ContextVar[CpuSet | None] = contextvars.ContextVar(
    "agentfleet_eval_worker_cpus", default=None
)


def available_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask, not just the count)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


def auto_workers(cores_per_worker: int = 1, cpus: Sequence[int] | None = None) -> int:
    """``--workers auto``: as many workers of ``cores_per_worker`` CPUs as fit, at least 1."""
    n = len(available_cpus() if cpus is None else cpus)
    return max(1, n // max(1, cores_per_worker))


def plan_cpu_sets(
    workers: int, cores_per_worker: int, cpus: Sequence[int] | None = None
) -> list[CpuSet] | None:
    """Disjoint CPU sets, one per worker, in CPU order; None (workers not pinned) when
    ``cores_per_worker`` is 0 or the sets do not fit in ``cpus`` (logged)."""
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if cores_per_worker < 0:
        raise ValueError("cores_per_worker must be >= 0 (0: no pinning)")
    if cores_per_worker == 0:
        return None
    have = list(available_cpus() if cpus is None else cpus)
    if workers * cores_per_worker > len(have):
        log.warning(
            "evaluation workers not pinned: %d workers of %d CPUs need %d, this process "
            "may use %d (%s)",
            workers,
            cores_per_worker,
            workers * cores_per_worker,
            len(have),
            format_cpus(have),
        )
        return None
    c = cores_per_worker
    return [tuple(have[i * c : (i + 1) * c]) for i in range(workers)]


def format_cpus(cpus: Sequence[int]) -> str:
    """``taskset -c`` syntax: ``0-3,6``."""
    out: list[str] = []
    s = sorted(set(cpus))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        out.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(out)


def parse_cpus(text: str) -> CpuSet:
    """``taskset -c`` syntax (``0-3,6``) -> sorted CPUs; ValueError when malformed."""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"not a CPU list: {text!r} (expected e.g. 0-3,6)")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ValueError(f"not a CPU list: {text!r} ({part} runs backwards)")
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def pin_command(command: str, cpus: CpuSet | None) -> str:
    """``command`` run on ``cpus`` only: its shell pins itself first (exit 125 if it
    cannot, e.g. no ``taskset`` in the sandbox). ``None``: the command unchanged."""
    if not cpus:
        return command
    return (
        f"taskset -cp {format_cpus(cpus)} $$ >/dev/null || "
        f"{{ echo 'agentfleet: cannot pin to CPUs {format_cpus(cpus)}' >&2; "
        f"exit {PIN_FAILED_EXIT}; }}\n{command}"
    )


class PinnedSandboxes:
    """A :class:`~agentfleet.sandbox.base.Sandboxes` whose ``exec`` runs each command on
    the current worker's CPUs (:data:`worker_cpus`, read at call time); every other call
    goes through unchanged."""

    def __init__(self, inner: Sandboxes) -> None:
        self.inner = inner

    async def create(self, req: CreateSandbox) -> SandboxInfo:
        return await self.inner.create(req)

    async def exec(
        self,
        sandbox_id: str,
        command: str,
        *,
        cwd: str = "",
        timeout: float | None = None,
        env: dict[str, str] | None = None,
    ) -> ExecResult:
        return await self.inner.exec(
            sandbox_id, pin_command(command, worker_cpus.get()), cwd=cwd, timeout=timeout, env=env
        )

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        return await self.inner.read_file(sandbox_id, path)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        await self.inner.write_file(sandbox_id, path, data)

    async def delete(self, sandbox_id: str) -> None:
        await self.inner.delete(sandbox_id)


__all__ = [
    "PIN_FAILED_EXIT",
    "CpuSet",
    "PinnedSandboxes",
    "auto_workers",
    "available_cpus",
    "format_cpus",
    "parse_cpus",
    "pin_command",
    "plan_cpu_sets",
    "worker_cpus",
]
