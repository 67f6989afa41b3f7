"""`images pull`'s disk estimate: at most a few registry manifests, scaled to the rest.

A ``docker`` on PATH that answers ``docker manifest inspect -v`` as a registry would (the
real path, a registry on loopback, is in ``test_image_pull.py``; Docker Hub, whose pull
limits count manifest requests, cannot be reached here): it logs each call and prints the
manifest its environment gives, well-formed or not.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from agentfleet.sandbox import image_pull


def _manifest(size: object) -> str:
    layers = [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": size}]
    return json.dumps({"Descriptor": {}, "SchemaV2Manifest": {"layers": layers}})


@pytest.fixture
def registry_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``docker`` printing ``$MANIFEST`` and logging its arguments; the log's path."""
    calls = tmp_path / "calls"
    script = tmp_path / "bin" / "docker"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nprintf "%s" "$MANIFEST"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MANIFEST", _manifest(10**9))
    return calls


def test_the_estimate_reads_a_sample_of_manifests(registry_docker: Path) -> None:
    images = [f"example.org/bench/i{n}:1" for n in range(25)]
    line, need = image_pull._disk_estimate(images, concurrency=2)
    calls = registry_docker.read_text().splitlines()
    assert 1 < len(calls) <= image_pull.MANIFEST_SAMPLE, calls
    assert all(c.startswith("manifest inspect -v example.org/bench/i") for c in calls)
    # 1 GB each to download, scaled from the sample to all 25; unpacked 3x
    assert line.startswith("25 to pull: 25.0 GB to download (")
    assert "manifests, scaled)" in line
    assert need == pytest.approx(25 * image_pull.UNPACKED_PER_DOWNLOADED)
    few = image_pull._disk_estimate(images[:3], concurrency=2)[0]
    assert "3.0 GB to download (registry manifests)" in few, few


@pytest.mark.parametrize("size", ["big", None, [1]])
def test_a_malformed_manifest_is_an_unknown_size(
    registry_docker: Path, monkeypatch: pytest.MonkeyPatch, size: object
) -> None:
    monkeypatch.setenv("MANIFEST", _manifest(size) if size is not None else '{"x": [1, 2]}')
    assert image_pull.download_bytes("example.org/bench/i:1") is None
    line, need = image_pull._disk_estimate(["example.org/bench/i:1"], concurrency=1)
    assert "1 of unknown size (~4 GB each)" in line and need == image_pull.EST_IMAGE_GB


def test_a_layer_that_is_not_an_object_is_an_unknown_size(
    registry_docker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANIFEST", json.dumps({"SchemaV2Manifest": {"layers": ["x"]}}))
    assert image_pull.download_bytes("example.org/bench/i:1") is None
