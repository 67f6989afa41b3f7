"""A sandbox's resource limits: the operator's maxima and a create request's own.

:class:`Limits` holds the operator's values (``serve-sandbox --memory/--cpus/--pids-limit/
--file-size/--cpu-time``, and docker's images): the defaults of a create request and its
maxima, on both backends. :meth:`Limits.resolve` answers 422 for a request asking for more
(naming each limit) and, on the process backend (``image=None``), for a request naming an
image. ``None`` is "no limit" (a request may still set one for its sandbox). How a backend
enforces the result is its own business (containers; cgroups and rlimits:
:mod:`agentfleet.sandbox.process_limits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentfleet.sandbox.base import CreateSandbox, SandboxError

__all__ = [
    "DEFAULT_FILE_SIZE_MB",
    "DEFAULT_MEMORY_MB",
    "DEFAULT_PIDS_LIMIT",
    "LIMIT_NAMES",
    "MB",
    "Limits",
    "Resources",
    "image_ref",
    "limits_report",
]

MB = 1024 * 1024
# the process backend's defaults (docker's: DockerBackend's); why: docs/sandboxes.md
DEFAULT_MEMORY_MB = 2048
DEFAULT_PIDS_LIMIT = 512
DEFAULT_FILE_SIZE_MB = 1024
# the limits of a sandbox, as /healthz and the create request name them
LIMIT_NAMES = ("memory_mb", "pids_limit", "cpus", "file_size_mb", "cpu_time_s")


def image_ref(name: str) -> str:
    """``name`` with docker's implied ``:latest`` when it has no tag or digest."""
    if "@" in name or ":" in name.rsplit("/", 1)[-1]:
        return name
    return f"{name}:latest"


@dataclass(frozen=True)
class Resources:
    """What one sandbox gets (``image`` is empty on the process backend; None: no limit)."""

    image: str
    memory_mb: int | None
    cpus: float | None
    pids_limit: int | None
    file_size_mb: int | None = None
    cpu_time_s: int | None = None

    def any(self) -> bool:
        """Is any limit set?"""
        return any(getattr(self, n) is not None for n in LIMIT_NAMES)


@dataclass(frozen=True)
class Limits:
    """The operator's image and limits: the defaults of a create request, and its maxima.

    A request may name ``image`` or one of ``allow_images``, and ask for less memory, CPUs,
    processes, file size or CPU time, never more: :meth:`resolve` answers 422 then, naming
    the limit. ``image=None``: the backend runs no images (process); a request naming one is
    422. A limit ``None``: none (a request may set one).
    """

    image: str | None
    memory_mb: int | None
    cpus: float | None
    pids_limit: int | None
    allow_images: frozenset[str] = frozenset()
    file_size_mb: int | None = None
    cpu_time_s: int | None = None

    @property
    def allowed_images(self) -> frozenset[str]:
        if self.image is None:
            return frozenset()
        return frozenset(image_ref(i) for i in (self.image, *self.allow_images))

    def resolve(self, req: CreateSandbox) -> Resources:
        problems = []
        image = req.image or self.image or ""
        if self.image is None:
            if req.image:
                problems.append(
                    f"image {req.image!r}: the process backend runs commands on the server's "
                    "machine, not in an image (use a server with --backend docker)"
                )
        elif image_ref(image) not in self.allowed_images:
            allowed = ", ".join(sorted(self.allowed_images))
            problems.append(f"image {image!r} is not allowed here (allowed: {allowed})")
        values: dict[str, Any] = {}
        for name in LIMIT_NAMES:
            asked, limit = getattr(req, name), getattr(self, name)
            if asked is not None and limit is not None and asked > limit:
                problems.append(f"{name} {asked:g} is over this server's limit of {limit:g}")
            values[name] = asked if asked is not None else limit
        if problems:
            raise SandboxError("; ".join(problems), 422)
        return Resources(image=image, **values)


def limits_report(backend: object) -> dict[str, dict[str, Any]] | None:
    """Each limit of ``backend`` with its value and what enforces it, for ``/healthz``
    (``enforced_by`` None: not enforced): the backend's own ``limits_report()`` (process),
    else from its container ``limits`` (docker); None for a backend with neither."""
    own = getattr(backend, "limits_report", None)
    if callable(own):
        report: dict[str, dict[str, Any]] = own()
        return report
    lim = getattr(backend, "limits", None)
    if not isinstance(lim, Limits):
        return None
    how = {
        "memory_mb": "container (cgroup)",
        "pids_limit": "container (cgroup)",
        "cpus": "container (cgroup)",
        "file_size_mb": "container ulimit FSIZE (per file)",
        "cpu_time_s": "container ulimit CPU (per process)",
    }
    return {
        name: {
            "value": getattr(lim, name),
            "enforced_by": how[name] if getattr(lim, name) is not None else None,
        }
        for name in LIMIT_NAMES
    }
