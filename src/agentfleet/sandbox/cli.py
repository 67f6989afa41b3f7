"""``agentfleet images ...`` and ``agentfleet sandbox ...``: typer sub-apps.

Mounted by the main command::

    app.add_typer(images_app, name="images")
    app.add_typer(sandbox_app, name="sandbox")
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from agentfleet.sandbox.base import (
    DEFAULT_IMAGE,
    DEFAULT_MAX_EXECS,
    DEFAULT_MAX_EXECS_PER_SANDBOX,
    DEFAULT_MAX_SANDBOXES,
    DEFAULT_REAP_INTERVAL_S,
    DEFAULT_TTL_S,
    MAX_CPU_TIME_S,
    MAX_CPUS,
    MAX_PIDS,
    MAX_SIZE_MB,
)

images_app = typer.Typer(
    help="Build and list sandbox images (docker backend).", no_args_is_help=True
)
sandbox_app = typer.Typer(help="Manage sandboxes left on this machine.", no_args_is_help=True)


def _err(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


# --------------------------------------------------------------------------- serve-sandbox
_UNITS = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?)?\s*", re.IGNORECASE)


def parse_memory_mb(
    text: str, option: str = "--memory", minimum: int = 6, zero: str | None = "no limit"
) -> int:
    """A size like docker's ``--memory``: ``2g``, ``512m``, ``1.5GiB``; a bare number is MiB.
    Returns MiB (at least ``minimum``, 6 for memory: docker's minimum; at most
    ``MAX_SIZE_MB``, the bound of a create request's). ``zero``: what 0 means to the
    caller, said in the errors (None: 0 is not a value)."""
    m = _SIZE_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"{option} {text!r}: expected a size like 512m or 2g")
    mb = float(m.group(1)) * _UNITS[(m.group(2) or "m").lower()]
    also = f" (or 0: {zero})" if zero else ""
    if mb < minimum:
        raise ValueError(f"{option} {text!r}: at least {minimum}m{also}")
    if mb > MAX_SIZE_MB:
        raise ValueError(f"{option} {text!r}: at most {MAX_SIZE_MB >> 20}t{also}")
    return int(mb)


def size_is_zero(text: str) -> bool:
    """``text`` is a size of 0 (``0``, ``0g``, ``0.0``)."""
    m = _SIZE_RE.fullmatch(text)
    return m is not None and float(m.group(1)) == 0


def _size_or_none(text: str, option: str, minimum: int) -> int | None:
    """A size option, ``0`` meaning no limit (None)."""
    return None if size_is_zero(text) else parse_memory_mb(text, option, minimum)


def limit_settings(
    *,
    memory: str | None = None,
    cpus: float | None = None,
    pids_limit: int | None = None,
    file_size: str | None = None,
    cpu_time: int | None = None,
) -> dict[str, Any]:
    """The backend kwargs of the limit options given (same meaning on both backends); ``0``
    is no limit (None); ``ValueError`` naming the option."""
    kw: dict[str, Any] = {}
    if memory is not None:
        kw["memory_mb"] = _size_or_none(memory, "--memory", 6)
    if cpus is not None:
        have = min(os.cpu_count() or 1, MAX_CPUS)
        if not 0 <= cpus <= have:
            raise ValueError(
                f"--cpus {cpus:g}: expected a number of CPUs up to this machine's {have:g} "
                "(0: no limit)"
            )
        kw["cpus"] = cpus or None
    for option, key, value, most in (
        ("--pids-limit", "pids_limit", pids_limit, MAX_PIDS),
        ("--cpu-time", "cpu_time_s", cpu_time, MAX_CPU_TIME_S),
    ):
        if value is not None:
            if not 0 <= value <= most:
                raise ValueError(f"{option} {value}: expected 1 to {most} (0: no limit)")
            kw[key] = value or None
    if file_size is not None:
        kw["file_size_mb"] = _size_or_none(file_size, "--file-size", 1)
    return kw


def serve_settings(
    backend: str,
    *,
    image: str | None = None,
    memory: str | None = None,
    cpus: float | None = None,
    pids_limit: int | None = None,
    file_size: str | None = None,
    cpu_time: int | None = None,
    allow_images: list[str] | None = None,
    image_map: Path | None = None,
    registry_prefix: str | None = None,
    pull: str | None = None,
    max_sandboxes: int = DEFAULT_MAX_SANDBOXES,
    max_execs: int = DEFAULT_MAX_EXECS,
    max_execs_per_sandbox: int = DEFAULT_MAX_EXECS_PER_SANDBOX,
    ttl: float = DEFAULT_TTL_S,
    reap_interval: float = DEFAULT_REAP_INTERVAL_S,
    confine: str | None = None,
    host: str = "127.0.0.1",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(backend kwargs, service kwargs) for ``run_server`` from ``serve-sandbox`` options;
    ``ValueError`` with a message naming the option when one is wrong. ``confine`` (process
    backend) left unset: ``required`` for a ``host`` beyond loopback, else ``auto``. The
    limits (``memory``, ``cpus``, ``pids_limit``, ``file_size``, ``cpu_time``; ``0``: none)
    apply to both backends; ``image`` and ``allow_images`` are docker's only."""
    from agentfleet.sandbox.base import MAX_TTL_S
    from agentfleet.sandbox.server import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    kw = limit_settings(
        memory=memory, cpus=cpus, pids_limit=pids_limit, file_size=file_size, cpu_time=cpu_time
    )
    docker_only = []
    if image is not None:
        if not image.strip():
            raise ValueError("--image: empty image name")
        kw["image"] = image
        docker_only.append("--image")
    if allow_images:
        if any(not i.strip() for i in allow_images):
            raise ValueError("--allow-image: empty image name")
        kw["allow_images"] = list(allow_images)
        docker_only.append("--allow-image")
    if image_map is not None or registry_prefix:
        kw["image_naming"] = _naming(image_map, registry_prefix)
        docker_only.append("--image-map/--registry-prefix")
    if pull is not None:
        from agentfleet.sandbox.image_box import PULL_POLICIES

        if pull not in PULL_POLICIES:
            raise ValueError(f"--pull {pull!r}: one of {', '.join(PULL_POLICIES)}")
        kw["pull"] = pull
        docker_only.append("--pull")
    if docker_only and backend != "docker":
        raise ValueError(f"{', '.join(docker_only)}: only for --backend docker")
    if backend == "process":
        kw["confine"] = confine_setting(confine, host)
    elif confine is not None:
        raise ValueError("--confine: only for --backend process (docker confines anyway)")
    for name, value in (  # each one is at least a process: no more than the kernel's pids
        ("--max-sandboxes", max_sandboxes),
        ("--max-execs", max_execs),
        ("--max-execs-per-sandbox", max_execs_per_sandbox),
    ):
        if not 1 <= value <= MAX_PIDS:
            raise ValueError(f"{name} {value}: expected 1 to {MAX_PIDS}")
    if not 0 < ttl <= MAX_TTL_S:
        raise ValueError(f"--ttl {ttl:g}: expected seconds in (0, {MAX_TTL_S:g}]")
    if not 0 <= reap_interval <= MAX_TTL_S:
        raise ValueError(
            f"--reap-interval {reap_interval:g}: expected seconds in [0, {MAX_TTL_S:g}] (0: off)"
        )
    service_kw = {
        "max_sandboxes": max_sandboxes,
        "max_execs": max_execs,
        "max_execs_per_sandbox": max_execs_per_sandbox,
        "default_ttl_s": ttl,
        "reap_period_s": reap_interval,
    }
    return kw, service_kw


def _naming(image_map: Path | None, prefix: str | None) -> Any:
    from agentfleet.sandbox.image_box import ImageNaming, load_image_map

    try:
        mapping = load_image_map(image_map.read_text(), str(image_map)) if image_map else {}
    except OSError as e:
        raise ValueError(f"--image-map {image_map}: {e.strerror or e}") from None
    return ImageNaming(mapping, prefix or "")


def confine_setting(confine: str | None, host: str) -> str:
    """``--confine`` of the servers: checked, or the default for ``host``."""
    from agentfleet.sandbox.process import CONFINE_MODES, default_confine

    if confine is None:
        return default_confine(host)
    if confine not in CONFINE_MODES:
        raise ValueError(f"--confine {confine!r}: expected one of {', '.join(CONFINE_MODES)}")
    return confine


@images_app.command("build")
def images_build(
    force: Annotated[
        bool,
        typer.Option("--force", help="rebuild the image and its root file system even if cached"),
    ] = False,
    name: Annotated[str, typer.Option("--name", help="image name")] = DEFAULT_IMAGE,
    rootfs: Annotated[
        Path | None,
        typer.Option(help="use this root file system folder instead of running debootstrap"),
    ] = None,
    suite: Annotated[str, typer.Option(help="Debian suite")] = "bookworm",
    mirror: Annotated[str | None, typer.Option(help="Debian mirror for debootstrap")] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            "-d",
            help="also build this dataset's image (if it has a Dockerfile), or each of its "
            "rows' images (bundled gso-mini, swe-perf-mini, swefficiency-mini)",
        ),
    ] = None,
    image_map: Annotated[Path | None, typer.Option(help=_IMAGE_MAP_HELP)] = None,
    registry_prefix: Annotated[str | None, typer.Option(help=_PREFIX_HELP)] = None,
) -> None:
    """Build the base image locally: debootstrap (minbase + python3, git) | docker import.

    With a dataset of image tasks: also the bench base (+ gcc, make, python3-pytest from
    Debian's mirror) and each row's image, tagged with the name its benchmark gives it."""
    from agentfleet.sandbox.images import ImageBuildError, build_base_image, build_dataset_image

    try:
        tasks = _image_tasks(dataset, image_map, registry_prefix) if dataset else []
        build_base_image(name, force=force, rootfs=rootfs, suite=suite, mirror=mirror)
        if tasks:
            from agentfleet.sandbox.task_images import build_bench_image, build_task_image

            bench = build_bench_image(name, force=force)
            for task, image in tasks:
                build_task_image(task, image, base=bench, force=force)
        elif dataset is not None:
            from agentfleet.tasks import load_dataset

            build_dataset_image(load_dataset(dataset).path, base=name, force=force)
    except ImageBuildError as e:
        _err(str(e))
        raise typer.Exit(1) from None
    except OSError as e:  # a missing docker / debootstrap / tar, an unwritable cache
        _err(_os_error_message(e))
        raise typer.Exit(1) from None


_IMAGE_MAP_HELP = "JSON/YAML object: instance id (or image) -> image name"
_PREFIX_HELP = "put before each task image's name (a mirror or private registry)"


def _image_tasks(
    dataset: str | None, image_map: Path | None, prefix: str | None
) -> list[tuple[Any, str]]:
    """(task, image name) of each image task of ``dataset``; exit 2 on a bad input."""
    from agentfleet.sandbox.image_box import ImageNaming, load_image_map
    from agentfleet.tasks import TaskNotFound, load_dataset

    if dataset is None:
        return []
    try:
        mapping = load_image_map(image_map.read_text(), str(image_map)) if image_map else {}
        tasks = [t for t in load_dataset(dataset).tasks() if t.image is not None]
    except (TaskNotFound, ValueError, OSError) as e:
        _err(str(e))
        raise typer.Exit(2) from None
    naming = ImageNaming(mapping, prefix or "")
    return [(t, naming.image_for(t.id, t.image or "")) for t in tasks]


@images_app.command("pull")
def images_pull(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="gso:PATH, swe-perf:PATH, ...")],
    image_map: Annotated[Path | None, typer.Option(help=_IMAGE_MAP_HELP)] = None,
    registry_prefix: Annotated[str | None, typer.Option(help=_PREFIX_HELP)] = None,
    pull: Annotated[
        str, typer.Option(help="never | missing | always (missing: present ones are skipped)")
    ] = "missing",
    concurrency: Annotated[int, typer.Option(min=1, help="pulls at once")] = 2,
) -> None:
    """Pull the images a dataset's tasks run in (resumable: present images are skipped)."""
    from agentfleet.sandbox.image_box import PULL_POLICIES
    from agentfleet.sandbox.image_pull import PullError, pull_images

    if pull not in PULL_POLICIES:
        _err(f"--pull {pull!r}: one of {', '.join(PULL_POLICIES)}")
        raise typer.Exit(2)
    tasks = _image_tasks(dataset, image_map, registry_prefix)
    if not tasks:
        _err(f"dataset {dataset!r} has no image tasks: nothing to pull")
        raise typer.Exit(2)
    try:
        report = pull_images([i for _, i in tasks], pull, concurrency=concurrency)
    except (PullError, OSError) as e:
        _err(str(e))
        raise typer.Exit(1) from None
    typer.echo(
        f"{len(report.present)} present, {len(report.pulled)} pulled, {len(report.failed)} failed"
    )
    if report.failed:
        raise typer.Exit(1)


@images_app.command("load")
def images_load(
    tar: Annotated[Path, typer.Argument(help="a tar made by `docker save`")],
) -> None:
    """Load images from a tar file (for machines that reach no registry)."""
    from agentfleet.sandbox.image_pull import PullError, load_images

    try:
        load_images(tar, log=typer.echo)
    except (PullError, OSError) as e:
        _err(str(e))
        raise typer.Exit(1) from None


PRUNE_KINDS = ("task", "bench", "dataset")  # the labels prune removes; never "base"


@images_app.command("prune")
def images_prune(
    kind: Annotated[
        list[str] | None,
        typer.Option(
            help=f"label kinds to remove (repeat): {', '.join(PRUNE_KINDS)} \\[default: task, "
            "unless --dataset]"
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset", "-d", help="remove the images this dataset's tasks name (pulled ones too)"
        ),
    ] = None,
    image_map: Annotated[Path | None, typer.Option(help=_IMAGE_MAP_HELP)] = None,
    registry_prefix: Annotated[str | None, typer.Option(help=_PREFIX_HELP)] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Remove images agentfleet labelled (agentfleet.image=KIND), or the tags a dataset's
    tasks name (--dataset, with its --image-map / --registry-prefix; never the base or bench
    image, an image a container uses stays); nothing else."""
    from agentfleet.sandbox.image_pull import labelled_images, prune_images, remove_named
    from agentfleet.sandbox.images import image_exists
    from agentfleet.sandbox.task_images import BENCH_IMAGE

    kinds = kind if kind is not None else ([] if dataset else ["task"])
    if "base" in kinds:
        _err("the base image is not pruned (docker rmi it by name)")
        raise typer.Exit(2)
    for k in kinds:
        if k not in PRUNE_KINDS:
            _err(f"--kind {k!r}: expected one of {', '.join(PRUNE_KINDS)}")
            raise typer.Exit(2)
    if dataset is None and (image_map is not None or registry_prefix):
        _err("--image-map / --registry-prefix: only with --dataset")
        raise typer.Exit(2)
    names = [i for _, i in _image_tasks(dataset, image_map, registry_prefix)]
    if dataset is not None and not names:
        _err(f"dataset {dataset!r} has no image tasks: nothing to prune")
        raise typer.Exit(2)
    shared = [n for n in dict.fromkeys(names) if n in (DEFAULT_IMAGE, BENCH_IMAGE)]
    if shared:
        typer.echo(f"kept (agentfleet's own, shared): {', '.join(shared)}")
    named = [n for n in dict.fromkeys(names) if n not in shared and image_exists(n)]
    found = labelled_images(kinds) if kinds else []
    if not found and not named:
        typer.echo("nothing to remove")
        return
    if not yes:
        if not sys.stdin.isatty():
            _err("not a terminal: pass --yes to confirm")
            raise typer.Exit(2)
        what = [f"{len(found)} labelled {', '.join(kinds)}"] if found else []
        what += [f"{len(named)} of dataset {dataset}"] if named else []
        for n in named[:10]:
            typer.echo(f"  {n}")
        if len(named) > 10:
            typer.echo(f"  ... and {len(named) - 10} more")
        typer.confirm(f"Remove {' and '.join(what)} image(s)?", abort=True)
    removed = remove_named(named, log=typer.echo) + (
        prune_images(kinds, log=typer.echo) if found else 0
    )
    typer.echo(f"removed {removed} image(s)")


_INSTALL_HINTS = {
    "docker": "install the Docker client (apt-get install docker.io)",
    "debootstrap": "install debootstrap (apt-get install debootstrap)",
    "tar": "install tar",
}


def _os_error_message(e: OSError) -> str:
    name = Path(str(e.filename)).name if e.filename else ""
    if isinstance(e, FileNotFoundError) and name in _INSTALL_HINTS:
        return f"`{name}` not found: {_INSTALL_HINTS[name]}"
    where = f": {e.filename}" if e.filename else ""
    return f"cannot build the image: {e.strerror or e}{where}"


@images_app.command("list")
def images_list() -> None:
    """List the images agentfleet built."""
    from agentfleet.sandbox.base import SandboxError
    from agentfleet.sandbox.images import list_images

    try:
        images = asyncio.run(list_images())
    except (SandboxError, OSError) as e:
        _err(f"cannot list images: {e}")
        raise typer.Exit(1) from None
    if not images:
        typer.echo("no agentfleet images (build one with `agentfleet images build`)")
        return
    for img in images:
        created = datetime.fromtimestamp(img["created"]).strftime("%Y-%m-%d %H:%M")
        tags = ", ".join(img["tags"]) or "<untagged>"
        typer.echo(f"{img['id']}  {created}  {img['size_mb']:>8.1f} MB  {tags}")


@sandbox_app.command("gc")
def sandbox_gc(
    root: Annotated[
        Path | None,
        typer.Option(help="folder of the sandboxes (default $TMPDIR/agentfleet-sandboxes)"),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
    docker: Annotated[bool, typer.Option(help="also remove agentfleet's containers")] = True,
) -> None:
    """Remove everything agentfleet left: containers by label, sandbox folders by marker,
    cgroups of servers not running any more (what they hold is killed).

    Live servers' sandboxes go too: run it when no sandbox server is running.
    """
    from agentfleet.sandbox.containers import docker_url, gc_containers
    from agentfleet.sandbox.folders import default_root, gc_all

    folder = root or default_root()
    if not yes:
        if not sys.stdin.isatty():
            _err("not a terminal: pass --yes to confirm")
            raise typer.Exit(2)
        typer.confirm(
            f"Remove every agentfleet sandbox container and every sandbox folder under {folder}?",
            abort=True,
        )
    removed = 0
    if docker and docker_url() is not None:
        try:
            for sid in asyncio.run(gc_containers()):
                typer.echo(f"removed container of {sid}")
                removed += 1
        except Exception as e:  # the folders still go
            _err(f"cannot remove containers: {e}")
    for sid in gc_all(folder):
        typer.echo(f"removed folder {folder / sid}")
        removed += 1
    from agentfleet.sandbox.cgroups import reap_stale

    for cgroup in reap_stale(kill=True):
        typer.echo(f"removed cgroup {cgroup}")
        removed += 1
    if not removed:
        typer.echo("nothing to remove")
