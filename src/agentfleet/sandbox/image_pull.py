"""``agentfleet images pull|load|prune``: the images of real-benchmark tasks.

``pull``: the images a dataset's tasks name (after ``--image-map`` / ``--registry-prefix``),
those present skipped (so an interrupted pull resumes where it stopped), a few at once,
with a line per image and the disk the missing ones may need against what is free.
``load``: ``docker load -i FILE.tar`` (images saved with ``docker save``, for machines that
reach no registry). ``prune``: remove the images agentfleet labelled (task images by
default), never others. Blocking subprocesses: command-line actions.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from agentfleet.sandbox.image_box import PullPolicy
from agentfleet.sandbox.images import IMAGE_LABEL, image_exists

Log = Callable[[str], None]
# What one instance image of these benchmarks takes on disk, roughly (their docs and
# reports: SWE-bench-style images about 2-6 GB each); only for the warning.
EST_IMAGE_GB = 4.0


class PullError(RuntimeError):
    pass


@dataclass
class PullReport:
    present: list[str]
    pulled: list[str]
    failed: dict[str, str]


def docker_root() -> Path:
    """The engine's data folder (where images take disk)."""
    proc = subprocess.run(
        ["docker", "info", "--format", "{{.DockerRootDir}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    root = proc.stdout.strip()
    return Path(root) if proc.returncode == 0 and root else Path("/var/lib/docker")


def free_gb(path: Path) -> float:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free / 1e9


def pull_images(
    images: Sequence[str],
    pull: PullPolicy,
    *,
    concurrency: int = 2,
    log: Log = print,
) -> PullReport:
    """Pull ``images`` as ``pull`` says; ``PullError`` with ``never`` and images missing."""
    wanted = list(dict.fromkeys(images))
    present = [i for i in wanted if image_exists(i)]
    todo = wanted if pull == "always" else [i for i in wanted if i not in present]
    for image in present:
        if image not in todo:
            log(f"skipped (present): {image}")
    if todo and pull == "never":
        raise PullError(
            f"{len(todo)} image(s) missing and --pull never: {', '.join(todo[:5])}"
            + (" ..." if len(todo) > 5 else "")
            + " (`agentfleet images load FILE.tar`, or --pull missing)"
        )
    if not todo:
        return PullReport(present, [], {})
    need, free = EST_IMAGE_GB * len(todo), free_gb(docker_root())
    log(
        f"{len(todo)} to pull: about {need:.0f} GB needed (~{EST_IMAGE_GB:g} GB each), "
        f"{free:.0f} GB free"
    )
    if need > free:
        log("warning: the disk may fill up before every image is pulled")
    pulled: list[str] = []
    failed: dict[str, str] = {}

    def one(image: str) -> None:
        proc = subprocess.run(
            ["docker", "pull", "-q", image], capture_output=True, text=True, check=False
        )
        if proc.returncode == 0:
            pulled.append(image)
        else:
            failed[image] = (proc.stderr.strip().splitlines() or ["docker pull failed"])[-1]
        done = len(pulled) + len(failed)
        state = "pulled" if proc.returncode == 0 else f"FAILED ({failed.get(image)})"
        log(f"[{done}/{len(todo)}] {state}: {image}")

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        list(pool.map(one, todo))
    return PullReport(present, pulled, failed)


def load_images(tar: Path, log: Log = print) -> None:
    if not tar.is_file():
        raise PullError(f"{tar}: no such file (a tar made by `docker save`)")
    proc = subprocess.run(
        ["docker", "load", "-i", str(tar)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise PullError(f"docker load {tar} failed: {proc.stderr.strip()[-500:]}")
    for line in proc.stdout.splitlines():
        log(line)


def labelled_images(kinds: Sequence[str]) -> list[str]:
    """Image ids (with their tags) agentfleet labelled with one of ``kinds``."""
    found: list[str] = []
    for kind in kinds:
        proc = subprocess.run(
            ["docker", "images", "-q", "--no-trunc", "--filter", f"label={IMAGE_LABEL}={kind}"],
            capture_output=True,
            text=True,
            check=False,
        )
        found += [i for i in proc.stdout.split() if i not in found]
    return found


def prune_images(kinds: Sequence[str], log: Log = print) -> int:
    """Remove the images labelled ``agentfleet.image=<kind>``; how many went."""
    removed = 0
    for image_id in labelled_images(kinds):
        proc = subprocess.run(
            ["docker", "rmi", "-f", image_id], capture_output=True, text=True, check=False
        )
        if proc.returncode == 0:
            removed += 1
            log(f"removed {image_id.removeprefix('sha256:')[:12]}")
        else:
            log(f"cannot remove {image_id[:19]}: {proc.stderr.strip()[-200:]}")
    return removed


def remove_named(names: Sequence[str], log: Log = print) -> int:
    """Remove the images tagged ``names`` that are present (``docker rmi NAME``: the tag,
    and the image if no other tag holds it; one a container uses stays); how many went."""
    removed = 0
    for name in dict.fromkeys(names):
        if not image_exists(name):
            continue
        proc = subprocess.run(["docker", "rmi", name], capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            removed += 1
            log(f"removed {name}")
        else:
            log(f"cannot remove {name}: {proc.stderr.strip()[-200:]}")
    return removed
