"""``agentfleet images pull|load|prune``: the images of real-benchmark tasks.

``pull``: the images a dataset's tasks name (after ``--image-map`` / ``--registry-prefix``),
those present skipped (so an interrupted pull resumes where it stopped), a few at once,
with a line as each starts and ends, and the disk the missing ones may need (their
registries' manifests) against what is free.
``load``: ``docker load -i FILE.tar`` (images saved with ``docker save``, for machines that
reach no registry). ``prune``: remove the images agentfleet labelled (task images by
default), never others. Blocking subprocesses: command-line actions.
"""

from __future__ import annotations

import json
import platform
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
# reports: SWE-bench-style images about 2-6 GB each): for an image whose registry does not
# say its size. Only for the estimate and its warning.
EST_IMAGE_GB = 4.0
# Unpacked, an image's layers take about this many times their download (gzip of
# binaries and source; 3.6x for the sandbox base image); only for the estimate.
UNPACKED_PER_DOWNLOADED = 3.0
# Manifests read for the estimate at most (spread over the list, the rest scaled): each is
# a registry request, and Docker Hub counts manifest requests against its pull limits.
MANIFEST_SAMPLE = 10
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


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


def download_bytes(image: str) -> int | None:
    """The compressed size of ``image``'s layers for this machine's platform, as its
    registry's manifest says (``docker manifest inspect -v``); None if it cannot tell."""
    argv = ["docker", "manifest", "inspect", "-v"]
    first = image.split("/", 1)[0] if "/" in image else ""
    if first.split(":")[0] in ("127.0.0.1", "localhost"):  # the engine's plain-HTTP ones
        argv.append("--insecure")
    try:
        proc = subprocess.run(
            [*argv, image], capture_output=True, text=True, check=False, timeout=60
        )
        data = json.loads(proc.stdout) if proc.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError):
        return None
    arch = _ARCH.get(platform.machine(), platform.machine())
    for entry in data if isinstance(data, list) else [data]:
        if not isinstance(entry, dict):
            continue
        plat = (entry.get("Descriptor") or {}).get("platform") or {}
        if isinstance(data, list) and (plat.get("os"), plat.get("architecture")) != (
            "linux",
            arch,
        ):
            continue
        layers = (entry.get("SchemaV2Manifest") or entry.get("OCIManifest") or {}).get("layers")
        if isinstance(layers, list) and layers:
            try:
                return sum(int(layer.get("size") or 0) for layer in layers)
            except (AttributeError, TypeError, ValueError):  # a manifest not as documented
                return None
    return None


def _disk_estimate(todo: Sequence[str], concurrency: int) -> tuple[str, float]:
    """A line saying what ``todo`` will take, and the GB needed on disk; from the manifests
    of at most ``MANIFEST_SAMPLE`` of them, scaled to all."""
    step = -(-len(todo) // MANIFEST_SAMPLE)
    sample = list(todo[::step])
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        sizes = list(pool.map(download_bytes, sample))
    known = [b for b in sizes if b is not None]
    scale = len(todo) / len(sample)
    download = sum(known) / 1e9 * scale
    unknown = round((len(sample) - len(known)) * scale)
    need = download * UNPACKED_PER_DOWNLOADED + EST_IMAGE_GB * unknown
    basis = "registry manifests" if step == 1 else f"{len(sample)} manifests, scaled"
    said = f"{download:.1f} GB to download ({basis})"
    if unknown:
        said += f" for {len(todo) - unknown}, {unknown} of unknown size (~{EST_IMAGE_GB:g} GB each)"
    return f"{len(todo)} to pull: {said}; about {need:.1f} GB on disk unpacked", need


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
    line, need = _disk_estimate(todo, concurrency)
    free = free_gb(docker_root())
    log(f"{line}, {free:.0f} GB free")
    if need > free:
        log("warning: the disk may fill up before every image is pulled")
    pulled: list[str] = []
    failed: dict[str, str] = {}

    def one(image: str) -> None:
        log(f"pulling: {image}")
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


def _rmi(args: Sequence[str], shown: str, log: Log) -> bool:
    """``docker rmi ARGS``, a line saying how it went; whether it did."""
    proc = subprocess.run(["docker", "rmi", *args], capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        log(f"removed {shown}")
    else:
        log(f"cannot remove {shown}: {proc.stderr.strip()[-200:]}")
    return proc.returncode == 0


def prune_images(kinds: Sequence[str], log: Log = print) -> int:
    """Remove the images labelled ``agentfleet.image=<kind>``; how many went."""
    ids = labelled_images(kinds)
    return sum(_rmi(["-f", i], i.removeprefix("sha256:")[:12], log) for i in ids)


def remove_named(names: Sequence[str], log: Log = print) -> int:
    """Remove the images tagged ``names`` that are present (``docker rmi NAME``: the tag,
    and the image if no other tag holds it; one a container uses stays); how many went."""
    present = [n for n in dict.fromkeys(names) if image_exists(n)]
    return sum(_rmi([n], n, log) for n in present)
