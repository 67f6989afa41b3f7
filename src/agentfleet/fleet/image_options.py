"""A run's sandbox backend and image options, checked early (``agentfleet run``).

Tasks that run in their own image (GSO, SWE-Perf, SWE-fficiency rows) need the docker
backend: the embedded sandbox server uses it for them by default, and a run that asks for
the process backend is refused before anything starts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from agentfleet.sandbox.image_box import PULL_POLICIES, ImageNaming, load_image_map
from agentfleet.tasks import Task

SANDBOX_BACKENDS = ("process", "docker")


class RunAsked(Protocol):
    """What :func:`image_options` reads of a run's request (``fleet.run.RunRequest``)."""

    backend: str
    sandbox_backend: str | None
    sandbox_urls: list[str]
    image_map: Path | None
    registry_prefix: str | None
    pull: str | None


def image_options(
    req: RunAsked, tasks: Sequence[Task], saved: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``FleetConfig``'s ``sandbox_backend``, ``image_naming`` and ``pull``: as asked, else
    as a resumed run's ``saved`` config (:func:`saved_image_options`) recorded them;
    ``ValueError`` with the user's message on a combination that cannot work."""
    saved = saved or {}
    images = [t for t in tasks if t.is_image_task]
    asked = (
        req.sandbox_backend
        or (req.backend if req.backend in SANDBOX_BACKENDS else None)
        or _saved_str(saved, "sandbox_backend")
    )
    backend = asked or ("docker" if images else "process")
    if backend not in SANDBOX_BACKENDS:
        raise ValueError(f"--sandbox-backend {backend!r}: process or docker")
    if images and backend != "docker" and not req.sandbox_urls:
        raise ValueError(
            f"the tasks of {images[0].dataset} run in their own images (e.g. "
            f"{images[0].image}): they need the docker sandbox backend "
            f"(--sandbox-backend docker, their default), not {backend}"
        )
    pull = req.pull or _saved_str(saved, "pull") or "missing"
    if pull not in PULL_POLICIES:
        raise ValueError(f"--pull {pull!r}: one of {', '.join(PULL_POLICIES)}")
    given = req.image_map is not None or req.registry_prefix or req.pull
    if given and not images:
        raise ValueError("--image-map, --registry-prefix and --pull are for image tasks only")
    if req.image_map is not None:
        image_map = _read_map(req.image_map)
    else:  # the map itself is saved, not its path: the file may have moved since
        image_map = load_image_map(json.dumps(saved.get("image_map") or {}), "of the resumed run")
    prefix = req.registry_prefix or _saved_str(saved, "registry_prefix") or ""
    return {
        "sandbox_backend": backend,
        "image_naming": ImageNaming(image_map, prefix),
        "pull": pull,
    }


def saved_image_options(sandbox_backend: str, naming: ImageNaming, pull: str) -> dict[str, Any]:
    """What ``config.json`` records of :func:`image_options` for ``--resume``."""
    return {
        "sandbox_backend": sandbox_backend,
        "image_map": dict(naming.image_map),
        "registry_prefix": naming.registry_prefix,
        "pull": pull,
    }


def _saved_str(saved: Mapping[str, Any], key: str) -> str | None:
    value = saved.get(key)
    return value if isinstance(value, str) and value else None


def _read_map(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"--image-map {path}: {e.strerror or e}") from None
    return load_image_map(text, str(path))
