"""Images for the docker backend, built locally without any registry.

The base image is a Debian root file system made by ``debootstrap --variant=minbase
--include=python3,git bookworm DIR`` and imported with ``docker import``. The root file system
is cached (``$XDG_CACHE_HOME/agentfleet/rootfs/<suite>``, default ``~/.cache/...``) and so is the
image: both are rebuilt only when asked (``force``). A dataset that needs more ships a
``Dockerfile`` (``FROM`` the ``BASE`` build argument) and gets its own image on top
(``build_dataset_image``), built with ``--network none``.

These are command-line actions (``agentfleet images build|list``): building runs blocking
subprocesses and must not be called from an event loop (``list_images`` is async).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agentfleet.sandbox.command_env import DEFAULT_PATH
from agentfleet.sandbox.containers import DEFAULT_IMAGE, close_client, connect

DEFAULT_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "git")
IMAGE_LABEL = "agentfleet.image"  # "base" or "dataset"
_DONE = ".agentfleet-rootfs-complete"

Log = Callable[[str], None]


class ImageBuildError(RuntimeError):
    pass


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "agentfleet"


def image_id(name: str) -> str:
    """The engine's id of image ``name``, or "" if it has none."""
    proc = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", name],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


def image_exists(name: str) -> bool:
    return bool(image_id(name))


def _run(argv: Sequence[str], log: Log, **kw: Any) -> None:
    log("+ " + " ".join(argv))
    proc = subprocess.run(list(argv), check=False, **kw)
    if proc.returncode != 0:
        raise ImageBuildError(f"{argv[0]} failed with exit status {proc.returncode}")


def make_rootfs(
    dest: Path,
    *,
    suite: str = DEFAULT_SUITE,
    include: Sequence[str] = BASE_PACKAGES,
    mirror: str | None = None,
    force: bool = False,
    log: Log = print,
) -> Path:
    """A debootstrapped root file system at ``dest`` (reused if complete, unless ``force``)."""
    done = dest.parent / f"{dest.name}{_DONE}"
    if done.exists() and dest.is_dir() and not force:
        log(f"using the cached root file system {dest}")
        return dest
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed (apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise ImageBuildError("debootstrap needs root")
    dest.parent.mkdir(parents=True, exist_ok=True)
    done.unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        argv = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(include)}",
            suite,
            str(tmp),
        ]
        if mirror:
            argv.append(mirror)
        _run(argv, log)
        # apt caches are no use in the image
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (tmp / sub).glob("*"):
                if f.is_file():
                    f.unlink()
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    done.touch()
    return dest


def import_rootfs(rootfs: Path, name: str, *, log: Log = print) -> None:
    """``tar -C rootfs -c . | docker import - name`` (with a label, PATH and a default CMD)."""
    if not (rootfs / "bin").exists() and not (rootfs / "usr" / "bin").is_dir():
        raise ImageBuildError(f"{rootfs} does not look like a root file system")
    log(f"+ tar -C {rootfs} -c . | docker import - {name}")
    tar = subprocess.Popen(
        ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE
    )
    assert tar.stdout is not None
    try:
        imp = subprocess.run(
            [
                "docker",
                "import",
                "--change",
                f"LABEL {IMAGE_LABEL}=base",
                "--change",
                f"ENV PATH={DEFAULT_PATH}",
                "--change",
                'CMD ["bash"]',
                "-",
                name,
            ],
            stdin=tar.stdout,
            stdout=subprocess.DEVNULL,
            check=False,
        )
    finally:
        tar.stdout.close()
        tar_rc = tar.wait()
    if tar_rc != 0 or imp.returncode != 0:
        raise ImageBuildError(f"import failed (tar {tar_rc}, docker import {imp.returncode})")


def build_base_image(
    name: str = DEFAULT_IMAGE,
    *,
    force: bool = False,
    rootfs: Path | None = None,
    suite: str = DEFAULT_SUITE,
    include: Sequence[str] = BASE_PACKAGES,
    mirror: str | None = None,
    log: Log = print,
) -> bool:
    """Build the base image unless it exists (``force``: rebuild it and its root file system).

    ``rootfs``: use this root file system instead of the cached one (it is not rebuilt).
    Returns whether an image was built.
    """
    if not force and image_exists(name):
        log(f"image {name} exists (use --force to rebuild it)")
        return False
    if rootfs is None:
        rootfs = make_rootfs(
            cache_dir() / "rootfs" / suite,
            suite=suite,
            include=include,
            mirror=mirror,
            force=force,
            log=log,
        )
    import_rootfs(rootfs, name, log=log)
    log(f"built image {name}")
    return True


def build_dataset_image(
    dataset_dir: Path,
    *,
    base: str = DEFAULT_IMAGE,
    name: str | None = None,
    force: bool = False,
    log: Log = print,
) -> str | None:
    """The image of a dataset that ships a ``Dockerfile`` (None if it needs none)."""
    dockerfile = dataset_dir / "Dockerfile"
    if not dockerfile.is_file():
        log(f"{dataset_dir.name}: no Dockerfile, the base image serves")
        return None
    name = name or f"agentfleet-{dataset_dir.name.lower()}:latest"
    if not force and image_exists(name):
        log(f"image {name} exists (use --force to rebuild it)")
        return name
    _run(
        [
            "docker",
            "build",
            "--network",
            "none",
            "--build-arg",
            f"BASE={base}",
            "--label",
            f"{IMAGE_LABEL}=dataset",
            "-t",
            name,
            str(dataset_dir),
        ],
        log,
    )
    return name


async def list_images(url: str | None = None) -> list[dict[str, Any]]:
    """Images agentfleet built (labelled, or tagged ``agentfleet*``), newest first."""
    client, connector = await connect(url)
    try:
        images = await client.images.list()
    finally:
        await close_client(client, connector)
    found = []
    for img in images:
        tags = [t for t in img.get("RepoTags") or [] if t != "<none>:<none>"]
        labels = img.get("Labels") or {}
        if IMAGE_LABEL in labels or any(t.startswith("agentfleet") for t in tags):
            found.append(
                {
                    "id": str(img.get("Id", "")).removeprefix("sha256:")[:12],
                    "tags": tags,
                    "kind": labels.get(IMAGE_LABEL, ""),
                    "size_mb": round(int(img.get("Size") or 0) / 1e6, 1),
                    "created": int(img.get("Created") or 0),
                }
            )
    found.sort(key=lambda i: -i["created"])
    return found
