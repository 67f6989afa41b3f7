"""Sandboxes of image tasks (GSO, SWE-Perf, SWE-fficiency) on the docker backend.

The repository is already inside the task's image (``workdir``, e.g. ``/testbed``) with its
own git history: nothing is copied from the host and nothing is bind-mounted. At create
the image's ``HEAD`` is recorded as ``refs/agentfleet/base``, the baseline every diff is
taken against. Commands run as root in the container (the images' trees are root's, as
their benchmarks run them), after the task's ``env_activate``. Files are read and written
through the engine's archive API, within the file cap.

Which images are allowed: the image a loaded task names (after the server's
``--image-map`` / ``--registry-prefix``) — the server loads only bundled datasets and
those under its ``--dataset-root`` folders, so the operator chose them — besides the
``--image`` / ``--allow-image`` rules that apply to requests naming an image.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import Any, Literal

from agentfleet.sandbox.base import SandboxError

PullPolicy = Literal["never", "missing", "always"]
PULL_POLICIES: tuple[PullPolicy, ...] = ("never", "missing", "always")
BASE_REF = "refs/agentfleet/base"  # the image's HEAD at create: the baseline of diffs
IMAGE_USER = "0:0"
IMAGE_HOME = "/root"


@dataclass(frozen=True)
class ImageSource:
    """What a sandbox of an image task starts from (the service fills it from the task)."""

    task_id: str
    image: str
    workdir: str
    env_activate: str = ""


@dataclass(frozen=True)
class ImageNaming:
    """The operator's renaming of task images: ``--image-map`` (instance id or image ->
    image), then ``--registry-prefix`` (put before names the map does not give)."""

    image_map: dict[str, str] = field(default_factory=dict)
    registry_prefix: str = ""

    def image_for(self, task_id: str, image: str) -> str:
        mapped = self.image_map.get(task_id) or self.image_map.get(image)
        if mapped:
            return mapped
        if self.registry_prefix:
            return f"{self.registry_prefix.rstrip('/')}/{image}"
        return image


def load_image_map(text: str, where: str) -> dict[str, str]:
    """An image map: a JSON (or YAML) object of instance id or image -> image name."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"--image-map {where}: not JSON/YAML: {e}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in data.items()
    ):
        raise ValueError(f"--image-map {where}: expected an object of id or image -> image")
    return {k: v.strip() for k, v in data.items()}


async def ensure_image(client: Any, image: str, pull: PullPolicy) -> None:
    """Have ``image`` locally as ``pull`` says; SandboxError naming what to do otherwise."""
    import aiodocker  # here: the process backend's server never loads it

    present = True
    try:
        await client.images.inspect(image)
    except aiodocker.DockerError:
        present = False
    if present and pull != "always":
        return
    if pull == "never":
        raise SandboxError(
            f"docker image {image!r} is not present and --pull is never: "
            "`agentfleet images pull` or `agentfleet images load` it first",
            503,
        )
    try:
        await client.images.pull(image, timeout=None)
    except aiodocker.DockerError as e:
        if present:  # always: a stale local image beats none
            return
        raise SandboxError(f"cannot pull docker image {image!r}: {e.message}", 502) from e


def container_path(workdir: str, path: str) -> str:
    """``path`` inside the container (relative to ``workdir``, or absolute), normalised."""
    if not path or "\x00" in path:
        raise SandboxError(f"bad path {path!r}", 422)
    return posixpath.normpath(posixpath.join(workdir, path))


def image_config(config: dict[str, Any], source: ImageSource) -> dict[str, Any]:
    """A container config for an image task: the image's tree, no bind mount, root."""
    host = {k: v for k, v in config["HostConfig"].items() if k != "Binds"}
    env = [f"HOME={IMAGE_HOME}", "LANG=C.UTF-8"]
    return {
        **config,
        "User": IMAGE_USER,
        "WorkingDir": source.workdir,
        "Env": env,
        "HostConfig": host,
    }


def activated(command: str, env_activate: str) -> str:
    """``command`` after the task's environment activation (if any)."""
    return f"{env_activate}\n{command}" if env_activate else command


def no_repo_error(source: ImageSource, output: str) -> SandboxError:
    return SandboxError(
        f"image task {source.task_id!r}: no git repository at {source.workdir} in its "
        f"image: {output[-500:]}",
        422,
    )


# The image's HEAD is the baseline. Files the image holds untracked and not ignored (build
# output of a repo whose .gitignore misses it) were not the agent's: they go into
# .git/info/exclude, anchored and glob-escaped, so no diff carries them (a patch adding
# them could not apply to the same image). Names git would C-quote are left as they are.
BASE_SCRIPT = (
    "git rev-parse -q --verify HEAD >/dev/null || "
    "{ echo 'the workdir has no git commit' >&2; exit 1; }; "
    f"git update-ref {BASE_REF} HEAD && "
    'ex=$(git rev-parse --git-path info/exclude) && mkdir -p "$(dirname "$ex")" && '
    "git -c core.quotePath=false ls-files --others --exclude-standard | "
    r"""{ grep -v '^"' || true; } | sed -e 's/[][*?\\]/\\&/g' -e 's/ $/\\ /' -e 's|^|/|' """
    '>> "$ex"'
)


async def _stat(container: Any, path: str) -> dict[str, Any] | None:
    async with container.docker._query(
        f"containers/{container.id}/archive", method="HEAD", params={"path": path}
    ) as resp:
        header = resp.headers.get("X-Docker-Container-Path-Stat")
    return json.loads(base64.b64decode(header)) if header else None


async def read_file(container: Any, path: str, cap: int) -> bytes:
    """A regular file of the container, at most ``cap`` bytes (413 beyond, 404 missing)."""
    import aiodocker

    try:
        stat = await _stat(container, path)
    except aiodocker.DockerError as e:
        status = 404 if e.status == 404 else 500
        raise SandboxError(f"no file {path!r} in the sandbox", status) from e
    except ValueError as e:  # an error answer to HEAD has no JSON body to read: not found
        raise SandboxError(f"no file {path!r} in the sandbox", 404) from e
    if stat is None or stat.get("mode", 0) & (1 << 31 | 1 << 27):  # a folder or a symlink
        raise SandboxError(f"{path!r} is not a regular file", 422)
    over = SandboxError(f"{path!r} is over the {cap} bytes file cap", 413)
    if int(stat.get("size", 0)) > cap:
        raise over
    # streamed and bounded: the file may have grown since the stat (a command swapping in a
    # huge one), and the whole archive was read into memory before the cap was applied
    archive = await _archive(container, path, cap + _TAR_SLACK)
    if archive is None:
        raise over
    data = await asyncio.to_thread(_first_member, archive, cap)  # tarfile: off the loop
    if data is None:
        raise SandboxError(f"{path!r} is not a regular file", 422)
    if len(data) > cap:
        raise over
    return data


_TAR_SLACK = 64 * 1024  # a tar stream's headers (long names too), padding and end blocks


async def _archive(container: Any, path: str, limit: int) -> bytes | None:
    """The engine's tar stream of ``path``, None once it runs past ``limit`` bytes."""
    got = bytearray()
    async with container.docker._query(
        f"containers/{container.id}/archive", method="GET", params={"path": path}
    ) as resp:
        async for chunk in resp.content.iter_chunked(1 << 16):
            got += chunk
            if len(got) > limit:
                return None
    return bytes(got)


def _first_member(archive: bytes, cap: int) -> bytes | None:
    """The first member's bytes (``cap + 1`` at most: over the cap shows), None if it is
    not a regular file."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
        member = tar.next()
        f = tar.extractfile(member) if member is not None and member.isfile() else None
        return None if f is None else f.read(cap + 1)


async def write_file(container: Any, path: str, data: bytes) -> None:
    """Write ``data`` at ``path`` in the container (its folder must exist; owner root)."""
    import aiodocker

    name = posixpath.basename(path)
    if not name or name in (".", ".."):
        raise SandboxError(f"cannot write {path!r}: not a file name", 400)
    try:  # a folder there would be replaced by the file (put_archive): refused, as on disk
        stat = await _stat(container, path)
    except (aiodocker.DockerError, ValueError):
        stat = None  # nothing there yet
    if stat is not None and stat.get("mode", 0) & (1 << 31):
        raise SandboxError(f"cannot write {path!r}: it is a folder", 400)
    archive = await asyncio.to_thread(_one_file_tar, name, data)
    try:
        await container.put_archive(posixpath.dirname(path) or "/", archive)
    except aiodocker.DockerError as e:
        raise SandboxError(
            f"cannot write {path!r}: {e.message}", 404 if e.status == 404 else 500
        ) from e


def _one_file_tar(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
