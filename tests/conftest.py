"""Suite-wide fixtures: blockbuster on for every test, Docker availability."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Any blocking call made from agentfleet code inside a running event loop fails the test."""
    with blockbuster_ctx(["agentfleet"]) as bb:
        yield bb


def docker_available() -> bool:
    return shutil.which("docker") is not None and os.path.exists("/var/run/docker.sock")


def require_docker() -> bool:
    return os.environ.get("AGENTFLEET_REQUIRE_DOCKER") == "1"
