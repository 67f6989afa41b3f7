"""Suite-wide fixtures: blockbuster on for the whole session, pool defaults reset, Docker."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

from agentfleet.http import HttpPool


@pytest.fixture(scope="session", autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Any blocking call made from agentfleet code inside a running event loop fails.

    Session-scoped and autouse, so it is active before any fixture of any scope (module-
    scoped fleets included) and stays active to the end. Nothing is allowed beyond
    blockbuster's own exceptions; allow a call with ``bb.functions[name].can_block_in(...)``
    only with a comment saying why it cannot block for long.
    """
    with blockbuster_ctx(["agentfleet"]) as bb:
        yield bb


@pytest.fixture(autouse=True)
def _reset_pool_defaults() -> Iterator[None]:
    """In-process CLI runs call HttpPool.configure_default(): undo it after each test."""
    yield
    HttpPool.reset_default()


def docker_available() -> bool:
    return shutil.which("docker") is not None and os.path.exists("/var/run/docker.sock")


def require_docker() -> bool:
    return os.environ.get("AGENTFLEET_REQUIRE_DOCKER") == "1"
