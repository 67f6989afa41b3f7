"""Pulls from a real registry: `images pull` and the docker backend's `--pull missing`.

A distribution registry (Debian's ``docker-registry``) serves on 127.0.0.1; a one-file
image is pushed to it and removed locally, then pulled back the way a user's machine pulls
GSO's or SWE-fficiency's images from Docker Hub: by ``images pull`` (``docker pull``) and by
the docker backend's ``--pull missing`` (the engine's API, before a sandbox is created).
Nothing is left: the image is removed, the registry stopped, its storage in tmp.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import docker_available, require_tool, tiny_image
from typer.testing import CliRunner

from agentfleet.cli import app
from agentfleet.sandbox.base import SandboxError
from agentfleet.sandbox.image_box import ensure_image
from agentfleet.sandbox.images import image_exists
from agentfleet.tasks import load_dataset

pytestmark = pytest.mark.docker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``127.0.0.1:PORT`` of a registry (the engine trusts loopback registries over HTTP)."""
    require_tool("docker", "pulls images", available=docker_available())
    require_tool("docker-registry", "serves images for the pull tests")
    root = tmp_path_factory.mktemp("registry")
    port = _free_port()
    (root / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    with (root / "log").open("w") as log:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(root / "config.yml")], stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"registry did not start: {(root / 'log').read_text()[-500:]}")
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def pushed(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-file image in the registry as ``REGISTRY/agentfleet-test/tiny:1``."""
    remote = f"{registry}/agentfleet-test/tiny:1"
    tiny_image(tmp_path_factory.mktemp("tiny"), remote, None)
    try:
        subprocess.run(["docker", "push", "-q", remote], check=True, capture_output=True)
        yield remote
    finally:
        subprocess.run(["docker", "rmi", remote], capture_output=True)


@pytest.fixture
def absent(pushed: str) -> str:
    """The pushed image, not present locally."""
    subprocess.run(["docker", "rmi", pushed], capture_output=True)
    assert not image_exists(pushed)
    return pushed


def test_images_pull_from_a_registry(absent: str, registry: str, tmp_path: Path) -> None:
    """Every gso-mini row mapped to the pushed image: pulled once, then present; an image
    the registry lacks fails with the registry's reason and exit 1, the others kept."""
    ids = [t.id for t in load_dataset("gso-mini").tasks()]
    image_map = tmp_path / "map.json"
    image_map.write_text(json.dumps(dict.fromkeys(ids, absent)))
    runner = CliRunner()
    res = runner.invoke(app, ["images", "pull", "-d", "gso-mini", "--image-map", str(image_map)])
    assert res.exit_code == 0, res.output
    assert "0 present, 1 pulled, 0 failed" in res.output and image_exists(absent)
    # the size from the registry's manifest (a one-file image: 0.0 GB), a line per start
    assert "1 to pull: 0.0 GB to download (registry manifests);" in res.output, res.output
    assert f"pulling: {absent}" in res.output and "[1/1] pulled" in res.output
    res = runner.invoke(app, ["images", "pull", "-d", "gso-mini", "--image-map", str(image_map)])
    assert res.exit_code == 0 and "1 present, 0 pulled" in res.output  # resumable
    missing = f"{registry}/agentfleet-test/none:1"
    # every row mapped into the loopback registry: nothing reaches Docker Hub
    image_map.write_text(json.dumps({ids[0]: absent, **dict.fromkeys(ids[1:], missing)}))
    res = runner.invoke(app, ["images", "pull", "-d", "gso-mini", "--image-map", str(image_map)])
    assert res.exit_code == 1 and "1 present, 0 pulled, 1 failed" in res.output, res.output
    assert "1 of unknown size (~4 GB each)" in res.output, res.output  # no manifest
    assert "FAILED" in res.output and missing in res.output
    assert "not found" in res.output or "unknown" in res.output, res.output


def test_images_prune_removes_a_datasets_pulled_images_only(absent: str, tmp_path: Path) -> None:
    """`images prune --dataset` removes what the dataset's tasks name (here, through the
    image map, the pulled image) and nothing else: the rows' own images stay."""
    ids = [t.id for t in load_dataset("gso-mini").tasks()]
    own = [t.image or "" for t in load_dataset("gso-mini").tasks()]
    had = [i for i in own if image_exists(i)]
    image_map = tmp_path / "map.json"
    image_map.write_text(json.dumps(dict.fromkeys(ids, absent)))
    runner = CliRunner()
    args = ["-d", "gso-mini", "--image-map", str(image_map)]
    assert runner.invoke(app, ["images", "pull", *args]).exit_code == 0
    assert image_exists(absent)
    refused = runner.invoke(app, ["images", "prune", *args])  # no terminal, no --yes
    assert refused.exit_code == 2 and image_exists(absent)
    res = runner.invoke(app, ["images", "prune", *args, "--yes"])
    assert res.exit_code == 0, res.output
    assert f"removed {absent}" in res.output and "removed 1 image(s)" in res.output
    assert not image_exists(absent)
    assert [i for i in own if image_exists(i)] == had
    again = runner.invoke(app, ["images", "prune", *args, "--yes"])
    assert again.exit_code == 0 and "nothing to remove" in again.output
    alone = runner.invoke(app, ["images", "prune", "--image-map", str(image_map), "--yes"])
    assert alone.exit_code == 2 and "only with --dataset" in alone.output


async def test_the_docker_backend_pulls_a_missing_image(absent: str, registry: str) -> None:
    """``--pull missing``, what a sandbox's create calls first: the image comes from the
    registry through the engine's API; one the registry lacks is a 502 naming it."""
    import aiodocker

    async with aiodocker.Docker() as client:
        await ensure_image(client, absent, "missing")
        assert (await client.images.inspect(absent))["Id"]
        missing = f"{registry}/agentfleet-test/none:1"
        with pytest.raises(SandboxError) as err:
            await ensure_image(client, missing, "missing")
        assert err.value.status == 502 and "agentfleet-test/none:1" in str(err.value)
