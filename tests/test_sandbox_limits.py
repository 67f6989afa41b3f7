"""The operator's docker limits and image are maxima: a create request may ask for less,
never more (422, naming the limit), nor an image outside the allowed set (422).

Against a real sandbox server (docker backend) on 127.0.0.1; the containers are inspected on
the engine. Without a Docker engine these skip (fail under ``AGENTFLEET_REQUIRE_DOCKER=1``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_sandbox_docker import skip_without_docker

from agentfleet.http.pool import NO_RETRY, HttpPool, Response
from agentfleet.sandbox import CreateSandbox, SandboxClient, SandboxError, SandboxService
from agentfleet.sandbox.containers import DEFAULT_IMAGE, Limits, image_ref
from agentfleet.sandbox.docker import DockerBackend
from agentfleet.sandbox.server import create_app
from agentfleet.serving import serve_in_loop

pytestmark = pytest.mark.docker

OTHER = "agentfleet-test-allowed-but-absent:1"  # allowed, never built


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, DockerBackend]]:
    skip_without_docker()
    backend = DockerBackend(
        root=tmp_path / "sb", memory_mb=512, cpus=1.0, pids_limit=128, allow_images=[OTHER]
    )
    service = SandboxService(backend, reap_period_s=0)
    async with serve_in_loop(create_app(service)) as running:
        yield running.url, backend


async def _create(url: str, **fields: Any) -> Response:
    return await HttpPool.for_loop().request(
        "POST", url + "/sandboxes", json=fields, retry=NO_RETRY, idempotent=False
    )


async def _host_config(backend: DockerBackend, sandbox_id: str) -> dict[str, Any]:
    c = await backend.client.containers.get(backend.container_id(sandbox_id))
    return dict(c["HostConfig"]) | {"Image": c["Config"]["Image"]}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"memory_mb": 513}, "memory_mb 513 is over this server's limit of 512"),
        ({"cpus": 1.5}, "cpus 1.5 is over this server's limit of 1"),
        ({"pids_limit": 129}, "pids_limit 129 is over this server's limit of 128"),
        ({"image": "busybox"}, "image 'busybox' is not allowed here"),
    ],
)
async def test_above_the_operators_limits_is_422(
    server: tuple[str, DockerBackend], fields: dict[str, Any], message: str
) -> None:
    url, backend = server
    resp = await _create(url, **fields)
    assert resp.status == 422, resp.text()
    assert message in resp.json()["error"]
    assert backend.sandbox_ids() == [] and list(backend.root.iterdir()) == []


async def test_every_problem_is_named_at_once(server: tuple[str, DockerBackend]) -> None:
    url, _ = server
    resp = await _create(url, memory_mb=4096, cpus=64, pids_limit=100000, image="alpine")
    assert resp.status == 422
    error = resp.json()["error"]
    for word in ("memory_mb 4096", "cpus 64", "pids_limit 100000", "'alpine'", DEFAULT_IMAGE):
        assert word in error, error


async def test_unset_takes_the_operators_values_and_less_is_fine(
    server: tuple[str, DockerBackend],
) -> None:
    url, backend = server
    client = SandboxClient(url)
    full = await client.create(CreateSandbox())
    less = await client.create(
        CreateSandbox(memory_mb=256, cpus=0.5, pids_limit=64, image=DEFAULT_IMAGE)
    )
    try:
        host = await _host_config(backend, full.sandbox_id)
        assert host["Memory"] == host["MemorySwap"] == 512 * 1024 * 1024
        assert host["NanoCpus"] == 1_000_000_000 and host["PidsLimit"] == 128
        assert host["Image"] == DEFAULT_IMAGE
        host = await _host_config(backend, less.sandbox_id)
        assert host["Memory"] == 256 * 1024 * 1024
        assert host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == 64
    finally:
        for info in (full, less):
            await client.delete(info.sandbox_id)


async def test_an_allowed_image_passes_the_check(server: tuple[str, DockerBackend]) -> None:
    url, backend = server
    with pytest.raises(SandboxError) as e:  # allowed; the engine then has no such image
        await SandboxClient(url).create(CreateSandbox(image=OTHER))
    assert e.value.status != 422 and "not found" in str(e.value)
    assert backend.sandbox_ids() == [] and list(backend.root.iterdir()) == []


def test_image_names_compare_with_docker_implied_latest() -> None:
    limits = Limits("base", 512, 1.0, 128, frozenset({"reg:5000/team/img", "x@sha256:ab"}))
    assert limits.allowed_images == {"base:latest", "reg:5000/team/img:latest", "x@sha256:ab"}
    assert image_ref("reg:5000/img:2") == "reg:5000/img:2"
    assert limits.resolve(CreateSandbox(image="base:latest")).image == "base:latest"
    with pytest.raises(SandboxError) as e:
        limits.resolve(CreateSandbox(image="base:2"))
    assert e.value.status == 422


async def test_file_size_and_cpu_time_are_container_ulimits(tmp_path: Path) -> None:
    """``--file-size`` / ``--cpu-time`` mean the same as on the process backend."""
    skip_without_docker()
    from agentfleet.sandbox.server import make_backend

    backend = make_backend("docker", root=tmp_path / "sb", file_size_mb=64, cpu_time_s=30)
    assert isinstance(backend, DockerBackend)
    async with SandboxService(backend, reap_period_s=0) as svc:
        with pytest.raises(SandboxError) as e:
            await svc.create(CreateSandbox(file_size_mb=65))
        assert e.value.status == 422 and "file_size_mb 65 is over" in str(e.value)
        info = await svc.create(CreateSandbox(file_size_mb=32))
        ulimits = (await _host_config(backend, info.sandbox_id))["Ulimits"]
        assert {"Name": "fsize", "Soft": 32 << 20, "Hard": 32 << 20} in ulimits
        assert {"Name": "cpu", "Soft": 30, "Hard": 30} in ulimits
        r = await svc.exec(info.sandbox_id, "head -c 100M /dev/zero > big; echo rc=$?")
        assert "rc=0" not in r.output, r
