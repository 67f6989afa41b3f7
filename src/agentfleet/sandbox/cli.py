"""``agentfleet images ...`` and ``agentfleet sandbox ...``: typer sub-apps.

Mounted by the main command::

    app.add_typer(images_app, name="images")
    app.add_typer(sandbox_app, name="sandbox")
"""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from agentfleet.sandbox.docker import DEFAULT_IMAGE

images_app = typer.Typer(
    help="Build and list sandbox images (docker backend).", no_args_is_help=True
)
sandbox_app = typer.Typer(help="Manage sandboxes left on this machine.", no_args_is_help=True)


def _err(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


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
            "--dataset", "-d", help="also build this dataset's image (if it has a Dockerfile)"
        ),
    ] = None,
) -> None:
    """Build the base image locally: debootstrap (minbase + python3, git) | docker import."""
    from agentfleet.sandbox.images import ImageBuildError, build_base_image, build_dataset_image

    try:
        build_base_image(name, force=force, rootfs=rootfs, suite=suite, mirror=mirror)
        if dataset is not None:
            from agentfleet.tasks import load_dataset

            build_dataset_image(load_dataset(dataset).path, base=name, force=force)
    except ImageBuildError as e:
        _err(str(e))
        raise typer.Exit(1) from None


@images_app.command("list")
def images_list() -> None:
    """List the images agentfleet built."""
    from agentfleet.sandbox.docker import SandboxError
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
    """Remove everything agentfleet left: containers by label, sandbox folders by marker.

    Live servers' sandboxes go too: run it when no sandbox server is running.
    """
    from agentfleet.sandbox.docker import docker_url, gc_containers
    from agentfleet.sandbox.process import default_root, gc_all

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
    if not removed:
        typer.echo("nothing to remove")
