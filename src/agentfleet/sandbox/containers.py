"""agentfleet's containers on a Docker engine: the connection, the labels, orphans and gc.

Every container agentfleet makes carries labels:

    agentfleet.owner    the backend instance that made it      agentfleet.sandbox  its id
    agentfleet.run      the fleet run (CreateSandbox.run)        agentfleet.expires  epoch seconds
    agentfleet.host / agentfleet.pid / agentfleet.pid_start_ticks (agentfleet.pid_started)
                        who the owner is, to tell if alive
    agentfleet.dir      the host folder (removed with the container)

so that whatever made it, a container is found (:func:`list_containers`) and removed with its
host folder when it is an orphan (:func:`reap_containers`: expired, or its owner on this host is
not alive) or by ``agentfleet sandbox gc`` (:func:`gc_containers`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp

from agentfleet.sandbox.base import DEFAULT_IMAGE, SandboxError
from agentfleet.sandbox.folders import MARKER, owner_alive, rmtree
from agentfleet.sandbox.limits import MB, Limits, Resources, image_ref

__all__ = [
    "DEFAULT_IMAGE",
    "LABEL_DIR",
    "LABEL_EXPIRES",
    "LABEL_HOST",
    "LABEL_OWNER",
    "LABEL_PID",
    "LABEL_PID_STARTED",
    "LABEL_PID_TICKS",
    "LABEL_RUN",
    "LABEL_SANDBOX",
    "Limits",
    "Resources",
    "close_client",
    "connect",
    "docker_url",
    "drain",
    "gc_containers",
    "host_config",
    "image_ref",
    "is_orphan",
    "list_containers",
    "reap_containers",
    "remove_container",
    "sandbox_labels",
]

LABEL_OWNER = "agentfleet.owner"
LABEL_SANDBOX = "agentfleet.sandbox"
LABEL_RUN = "agentfleet.run"
LABEL_EXPIRES = "agentfleet.expires"
LABEL_HOST = "agentfleet.host"
LABEL_PID = "agentfleet.pid"
LABEL_PID_STARTED = "agentfleet.pid_started"
LABEL_PID_TICKS = "agentfleet.pid_start_ticks"
LABEL_DIR = "agentfleet.dir"


def sandbox_labels(
    *,
    owner: str,
    sandbox_id: str,
    run: str,
    expires: float,
    host: str,
    folder: Path,
    pid_started: float | None,
    pid_start_ticks: int | None = None,
) -> dict[str, str]:
    """The labels of a sandbox's container (this process is its owner's pid)."""
    labels = {
        LABEL_OWNER: owner,
        LABEL_SANDBOX: sandbox_id,
        LABEL_RUN: run,
        LABEL_EXPIRES: f"{expires:.3f}",
        LABEL_HOST: host,
        LABEL_PID: str(os.getpid()),
        LABEL_DIR: str(folder),
    }
    if pid_started is not None:
        labels[LABEL_PID_STARTED] = f"{pid_started:.3f}"
    if pid_start_ticks is not None:
        labels[LABEL_PID_TICKS] = str(pid_start_ticks)
    return labels


def host_config(res: Resources, work: Path, network: str) -> dict[str, Any]:
    """The engine's ``HostConfig``: limits (no swap beyond memory), the workdir bind-mounted at
    its own path, docker-init, no new privileges; file size and CPU time as ulimits (a
    limit ``None``: docker's 0, none)."""
    memory = (res.memory_mb or 0) * MB
    ulimits = [
        {"Name": name, "Soft": value, "Hard": value}
        for name, value in (
            ("fsize", res.file_size_mb and res.file_size_mb * MB),
            ("cpu", res.cpu_time_s),
        )
        if value
    ]
    return {
        "NetworkMode": network,
        "Memory": memory,
        "MemorySwap": memory,
        "NanoCpus": int((res.cpus or 0) * 1e9),
        "PidsLimit": res.pids_limit or 0,
        "Binds": [f"{work}:{work}:rw"],
        "Init": True,
        "SecurityOpt": ["no-new-privileges"],
        "Ulimits": ulimits,
    }


def docker_url() -> str | None:
    """The engine's address: ``DOCKER_HOST``, else the usual local socket (None: no engine)."""
    host = os.environ.get("DOCKER_HOST")
    if host:
        return host
    for path in ("/var/run/docker.sock", "/run/docker.sock"):
        if os.path.exists(path):
            return f"unix://{path}"
    return None


async def connect(url: str | None = None) -> tuple[aiodocker.Docker, aiohttp.BaseConnector | None]:
    """An aiodocker client (no connection limit for local sockets) and the connector we own."""
    if url is None:
        url = await asyncio.to_thread(docker_url)
    if url is None:
        raise SandboxError("no Docker engine: no DOCKER_HOST and no /var/run/docker.sock", 503)
    if url.startswith("unix://"):
        # aiohttp's default pool holds 100 connections; every running exec holds one
        connector: aiohttp.BaseConnector | None = aiohttp.UnixConnector(
            url[len("unix://") :], limit=0
        )
        # the URL only names the host in request URLs once we bring our own connector
        return aiodocker.Docker(url="unix://localhost", connector=connector), connector
    return aiodocker.Docker(url=url), None


async def close_client(client: aiodocker.Docker, connector: aiohttp.BaseConnector | None) -> None:
    """Close what :func:`connect` opened."""
    await client.close()
    if connector is not None:
        await connector.close()


async def remove_container(client: aiodocker.Docker, container_id: str) -> bool:
    """Force-remove a container (and its anonymous volumes); False if it was gone already
    or its removal is in progress."""
    try:
        await client.containers.container(container_id).delete(force=True, v=True)
        return True
    except aiodocker.DockerError as e:
        if e.status in (404, 409):  # gone already / removal in progress
            return False
        raise


def _remove_folder(folder: str | None) -> None:
    """Remove a sandbox folder named by a label: only if it holds the agentfleet marker."""
    if not folder:
        return
    path = Path(folder)
    if path.is_dir() and not path.is_symlink() and (path / MARKER).is_file():
        rmtree(path)


async def list_containers(client: aiodocker.Docker) -> list[dict[str, Any]]:
    """Every container agentfleet made (running or not), as the engine lists them."""
    filters = json.dumps({"label": [LABEL_OWNER]})
    found = await client.containers.list(all=True, filters=filters)
    return [c._container for c in found]


async def _remove_where(
    client: aiodocker.Docker, doomed: Callable[[dict[str, str]], Awaitable[bool]]
) -> list[str]:
    """Remove the containers whose labels are ``doomed``, and their host folders; return
    their sandbox ids (or container ids)."""
    removed: list[str] = []
    for c in await list_containers(client):
        labels = c.get("Labels") or {}
        if not await doomed(labels):
            continue
        await remove_container(client, c["Id"])
        await asyncio.to_thread(_remove_folder, labels.get(LABEL_DIR))
        removed.append(labels.get(LABEL_SANDBOX) or c["Id"][:12])
    return removed


def is_orphan(labels: dict[str, str], *, instance_id: str, host: str, now: float) -> bool:
    """Does a container with these labels belong to no live server? Not if ``instance_id``
    (the caller) owns it; yes if it expired; else only a server on this ``host`` can tell:
    yes if its owner pid is not alive (not running, a newer process, or a zombie)."""
    if labels.get(LABEL_OWNER) == instance_id:
        return False
    try:
        if float(labels.get(LABEL_EXPIRES, "inf")) <= now:
            return True
    except ValueError:
        pass
    if labels.get(LABEL_HOST) != host:
        return False  # another machine's server: we cannot tell whether it is alive
    try:
        pid = int(labels.get(LABEL_PID, ""))
    except ValueError:
        return True
    started: float | None
    try:
        started = float(labels[LABEL_PID_STARTED])
    except (KeyError, ValueError):
        started = None
    ticks: int | None
    try:
        ticks = int(labels[LABEL_PID_TICKS])
    except (KeyError, ValueError):
        ticks = None
    return not owner_alive(pid, started, ticks=ticks)


async def reap_containers(client: aiodocker.Docker, *, instance_id: str, host: str) -> list[str]:
    """Remove containers (and folders) of dead server instances and expired ones
    (:func:`is_orphan`); return their sandbox ids."""
    now = time.time()

    def doomed(labels: dict[str, str]) -> Awaitable[bool]:
        return asyncio.to_thread(is_orphan, labels, instance_id=instance_id, host=host, now=now)

    return await _remove_where(client, doomed)


async def gc_containers(url: str | None = None, *, owner: str | None = None) -> list[str]:
    """Remove every container agentfleet left (any owner) and their host folders.

    For ``agentfleet sandbox gc``; returns the sandbox ids (or container ids) removed.
    ``owner``: only those of this backend instance.
    """

    async def doomed(labels: dict[str, str]) -> bool:
        return owner is None or labels.get(LABEL_OWNER) == owner

    client, connector = await connect(url)
    try:
        return await _remove_where(client, doomed)
    finally:
        await close_client(client, connector)


async def drain(stream: Any, feed: Callable[[bytes], Any] | None = None) -> None:
    """Read an exec's output stream (aiodocker's) to its end, each chunk to ``feed``, and
    close it whatever happens."""
    try:
        while (msg := await stream.read_out()) is not None:
            if feed is not None:
                feed(msg.data)
    finally:
        await stream.close()
