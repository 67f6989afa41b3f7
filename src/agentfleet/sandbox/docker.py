"""DockerBackend: one container per sandbox, commands as ``docker exec``, over aiodocker.

Layout: the sandbox's folder is made on the host exactly as the process backend makes it
(``<root>/<sandbox_id>/work`` holding the task's repo as a git repo, the marker file beside it),
and ``work`` is bind-mounted read-write into the container *at the same path*. So the workdir
reported to clients, the paths commands see and the paths ``read_file``/``write_file`` check are
one and the same, and symlinks made inside the container resolve the same way on the host
(the confinement checks of the process backend are reused unchanged). This needs the engine to
run on this machine (a local socket), which is what ``.ci/run`` sets up.

Containers run ``sleep <ttl + 10 min>`` under ``docker-init`` with no network, memory / CPU /
pids limits, ``no-new-privileges`` and the server's own uid:gid (so the server can always delete
what commands leave in the workdir), and carry labels:

    agentfleet.owner    the backend instance that made it      agentfleet.sandbox  its id
    agentfleet.run      the fleet run (CreateSandbox.run)        agentfleet.expires  epoch seconds
    agentfleet.host / agentfleet.pid / agentfleet.pid_started    who the owner is, to tell if alive
    agentfleet.dir      the host folder (removed with the container)

Each command runs as ``bash -c WRAPPER`` in the container: the wrapper starts
``timeout -k 1 T bash -c COMMAND`` in a process group of its own, waits for it, then SIGKILLs
whatever is left of that group and every process still carrying the exec's token (below), so
``cmd &`` children, even ``setsid`` ones, do not outlive the exec. ``timeout`` enforces the time
limit inside the container, so a command keeps no CPU after its limit even if this server is
gone. Every process of an exec carries ``AGENTFLEET_EXEC=<token>`` in its environment: when the
request is cancelled (client gone) or the host-side deadline passes, a second exec kills every
process holding that token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp

from agentfleet.sandbox.base import (
    DEFAULT_EXEC_TIMEOUT,
    CreateSandbox,
    ExecRequest,
    ExecResult,
    SandboxError,
    SandboxNotFound,
)
from agentfleet.sandbox.process import (
    DEFAULT_PATH,
    MARKER,
    MAX_FILE_BYTES,
    OutputCapture,
    ProcessBackend,
    _owner_alive,
    _process_start_time,
    _rmtree,
    command_env,
    default_root,
)

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "agentfleet-base:bookworm"
LABEL_OWNER = "agentfleet.owner"
LABEL_SANDBOX = "agentfleet.sandbox"
LABEL_RUN = "agentfleet.run"
LABEL_EXPIRES = "agentfleet.expires"
LABEL_HOST = "agentfleet.host"
LABEL_PID = "agentfleet.pid"
LABEL_PID_STARTED = "agentfleet.pid_started"
LABEL_DIR = "agentfleet.dir"
TOKEN_VAR = "AGENTFLEET_EXEC"
KILL_AFTER_S = 1  # `timeout -k`: SIGTERM at the limit, SIGKILL this much later
HOST_GRACE_S = 5.0  # host-side deadline: limit + KILL_AFTER_S + this, then kill by token
CONTAINER_LINGER_S = 600  # containers stop by themselves this long after their ttl

# $1: timeout in seconds, $2: the command. Runs as the exec's main process (a session leader).
_WRAPPER = """exec 2>&1
timeout -k KILL_AFTER "$1" bash -c "$2" &
pid=$!
wait "$pid"
rc=$?
kill -KILL -- "-$pid" 2>/dev/null
# and what left the group (setsid): whatever carries this exec's token
for d in /proc/[0-9]*; do
  [ "${d#/proc/}" = "$$" ] && continue
  while IFS= read -r -d '' v; do
    if [ "$v" = "TOKEN_VAR=$TOKEN_VAR" ]; then kill -KILL "${d#/proc/}"; break; fi
  done 2>/dev/null <"$d/environ"
done
exit "$rc"
""".replace("KILL_AFTER", str(KILL_AFTER_S)).replace("TOKEN_VAR", TOKEN_VAR)

# $1: the token. Kills every process whose environment holds AGENTFLEET_EXEC=<token>.
_KILLER = """t="TOKEN_VAR=$1"
for round in 1 2 3 4 5; do
  found=
  for d in /proc/[0-9]*; do
    if grep -qzx -- "$t" "$d/environ" 2>/dev/null; then
      kill -KILL "${d#/proc/}" 2>/dev/null && found=1
    fi
  done
  [ -z "$found" ] && exit 0
done
""".replace("TOKEN_VAR", TOKEN_VAR)


# how the engine / the runtime say that a container has stopped under an exec
# the engine's words for "the container stopped under this exec" (containerd says `ttrpc:
# closed` when the task died mid-exec); acted on only once the container is seen stopped
_NOT_RUNNING = re.compile(
    r"is not running|cannot exec in a \w+ state|OCI runtime exec failed|ttrpc: closed"
)


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
    await client.close()
    if connector is not None:
        await connector.close()


@dataclass
class _Box:
    sandbox_id: str
    container: Any  # aiodocker DockerContainer
    work: Path
    dir: Path
    deleting: bool = False


async def _remove_container(client: aiodocker.Docker, container_id: str) -> bool:
    try:
        await client.containers.container(container_id).delete(force=True, v=True)
        return True
    except aiodocker.DockerError as e:
        if e.status in (404, 409):  # gone already / removal in progress
            return False
        raise


def _remove_dir(folder: str | None) -> None:
    """Remove a sandbox folder named by a label: only if it holds the agentfleet marker."""
    if not folder:
        return
    path = Path(folder)
    if path.is_dir() and not path.is_symlink() and (path / MARKER).is_file():
        _rmtree(path)


async def list_containers(client: aiodocker.Docker) -> list[dict[str, Any]]:
    """Every container agentfleet made (running or not), as the engine lists them."""
    filters = json.dumps({"label": [LABEL_OWNER]})
    found = await client.containers.list(all=True, filters=filters)
    return [c._container for c in found]


async def gc_containers(url: str | None = None, *, owner: str | None = None) -> list[str]:
    """Remove every container agentfleet left (any owner) and their host folders.

    For ``agentfleet sandbox gc``; returns the sandbox ids (or container ids) removed.
    ``owner``: only those of this backend instance.
    """
    client, connector = await connect(url)
    removed: list[str] = []
    try:
        for c in await list_containers(client):
            labels = c.get("Labels") or {}
            if owner is not None and labels.get(LABEL_OWNER) != owner:
                continue
            await _remove_container(client, c["Id"])
            await asyncio.to_thread(_remove_dir, labels.get(LABEL_DIR))
            removed.append(labels.get(LABEL_SANDBOX) or c["Id"][:12])
    finally:
        await close_client(client, connector)
    return removed


class DockerBackend:
    """Sandboxes as containers of a local Docker engine (see the module's docstring).

    Args:
        image: image of the containers (``CreateSandbox.image`` overrides it per sandbox).
        root: host folder of the work folders (default ``$TMPDIR/agentfleet-sandboxes``).
        memory_mb, cpus, pids_limit: container limits (``CreateSandbox`` may override the
            first two). Swap is not allowed beyond ``memory_mb``.
        network: docker network mode; ``"none"`` (the default) means no network at all.
        user: ``uid:gid`` commands run as (default: this server's own, so files they make
            stay deletable by the server).
        default_timeout: command timeout when a request names none.
        max_file_bytes: size cap of ``read_file`` / ``write_file`` (413 beyond).
        orphan_sweep_s: how often containers of dead servers (and expired ones) are removed,
            besides once at start (0: only at start).
        url: the engine (default ``DOCKER_HOST`` or ``/var/run/docker.sock``).
    """

    name = "docker"

    def __init__(
        self,
        image: str = DEFAULT_IMAGE,
        *,
        root: Path | str | None = None,
        memory_mb: int = 2048,
        cpus: float = 1.0,
        pids_limit: int = 512,
        network: str = "none",
        user: str | None = None,
        default_timeout: float = DEFAULT_EXEC_TIMEOUT,
        max_file_bytes: int = MAX_FILE_BYTES,
        orphan_sweep_s: float = 300.0,
        url: str | None = None,
    ) -> None:
        self.image = image
        self.root = Path(root) if root is not None else default_root()
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.pids_limit = pids_limit
        self.network = network
        self.user = user if user is not None else f"{os.getuid()}:{os.getgid()}"
        self.default_timeout = default_timeout
        self.orphan_sweep_s = orphan_sweep_s
        self.url = url
        # the host folders (copy, git, marker, file access) are the process backend's job
        self.files = ProcessBackend(self.root, confine=False, max_file_bytes=max_file_bytes)
        self.instance_id = self.files.instance_id
        self.host = ""
        self._pid_started: float | None = None
        self._client: aiodocker.Docker | None = None
        self._connector: aiohttp.BaseConnector | None = None
        self._boxes: dict[str, _Box] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._started = False

    # lifecycle -------------------------------------------------------------------------
    @property
    def client(self) -> aiodocker.Docker:
        if self._client is None:
            raise SandboxError("docker backend not started", 503)
        return self._client

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.host = await asyncio.to_thread(socket.gethostname)
        self._pid_started = await asyncio.to_thread(_process_start_time, os.getpid())
        self._client, self._connector = await connect(self.url)
        try:
            try:
                await self._client.version()
            except (aiodocker.DockerError, aiohttp.ClientError, OSError) as e:
                raise SandboxError(f"Docker engine not reachable: {e}", 503) from e
            try:
                await self._client.images.inspect(self.image)
            except aiodocker.DockerError as e:
                raise SandboxError(
                    f"docker image {self.image!r} not found: build it with "
                    "`agentfleet images build`",
                    503,
                ) from e
            await self.files.start()  # makes root, reaps folders of dead servers
            self.root = self.files.root
            removed = await self.reap_orphans()
            if removed:
                log.info("removed %d orphaned sandbox containers", len(removed))
        except BaseException:
            self._started = False
            await self._close_client()
            raise
        if self.orphan_sweep_s > 0:
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="docker-orphan-sweep")

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.orphan_sweep_s)
            try:
                await self.reap_orphans()
            except Exception:
                log.exception("docker orphan sweep failed")

    def _is_orphan(self, labels: dict[str, str], now: float) -> bool:
        if labels.get(LABEL_OWNER) == self.instance_id:
            return False
        try:
            if float(labels.get(LABEL_EXPIRES, "inf")) <= now:
                return True
        except ValueError:
            pass
        if labels.get(LABEL_HOST) != self.host:
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
        return not _owner_alive({"pid": pid, "pid_started": started})

    async def reap_orphans(self) -> list[str]:
        """Remove containers (and folders) of dead server instances and expired ones."""
        now = time.time()
        removed: list[str] = []
        for c in await list_containers(self.client):
            labels = c.get("Labels") or {}
            if not await asyncio.to_thread(self._is_orphan, labels, now):
                continue
            await _remove_container(self.client, c["Id"])
            await asyncio.to_thread(_remove_dir, labels.get(LABEL_DIR))
            removed.append(labels.get(LABEL_SANDBOX) or c["Id"][:12])
        return removed

    async def aclose(self) -> None:
        """Delete every sandbox this backend made, then close the engine client."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

        async def delete(sandbox_id: str) -> None:
            with contextlib.suppress(SandboxError, aiodocker.DockerError):
                await self.delete(sandbox_id)

        try:
            await asyncio.gather(*(delete(s) for s in list(self._boxes)))
            await self.files.aclose()
        finally:
            await self._close_client()

    async def _close_client(self) -> None:
        client, connector = self._client, self._connector
        self._client = self._connector = None
        if client is not None:
            await close_client(client, connector)

    def sandbox_ids(self) -> list[str]:
        return list(self._boxes)

    def container_id(self, sandbox_id: str) -> str:
        return str(self._get(sandbox_id).container.id)

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self._get(sandbox_id).dir

    def _get(self, sandbox_id: str) -> _Box:
        box = self._boxes.get(sandbox_id)
        if box is None:
            raise SandboxNotFound(f"no sandbox {sandbox_id!r}")
        return box

    # create / delete -------------------------------------------------------------------
    async def create(self, sandbox_id: str, source_dir: Path | None, req: CreateSandbox) -> str:
        if not self._started:
            await self.start()
        if sandbox_id in self._boxes:
            raise SandboxError(f"sandbox {sandbox_id} already exists", 409)
        workdir = await self.files.create(sandbox_id, source_dir, req)
        folder = self.files.sandbox_dir(sandbox_id)
        work = Path(workdir)
        try:
            container = await self._start_container(sandbox_id, work, folder, req)
        except BaseException:
            await asyncio.shield(self.files.delete(sandbox_id))
            raise
        self._boxes[sandbox_id] = _Box(sandbox_id, container, work, folder)
        return workdir

    def _config(self, sandbox_id: str, work: Path, folder: Path, req: CreateSandbox) -> Any:
        expires = time.time() + req.ttl_s
        memory = (req.memory_mb or self.memory_mb) * 1024 * 1024
        labels = {
            LABEL_OWNER: self.instance_id,
            LABEL_SANDBOX: sandbox_id,
            LABEL_RUN: req.run,
            LABEL_EXPIRES: f"{expires:.3f}",
            LABEL_HOST: self.host,
            LABEL_PID: str(os.getpid()),
            LABEL_DIR: str(folder),
        }
        if self._pid_started is not None:
            labels[LABEL_PID_STARTED] = f"{self._pid_started:.3f}"
        return {
            "Image": req.image or self.image,
            "Cmd": ["sleep", str(math.ceil(req.ttl_s) + CONTAINER_LINGER_S)],
            "Labels": labels,
            "User": self.user,
            "WorkingDir": str(work),
            "Env": [f"PATH={DEFAULT_PATH}", f"HOME={work}", "LANG=C.UTF-8"],
            "HostConfig": {
                "NetworkMode": self.network,
                "Memory": memory,
                "MemorySwap": memory,
                "NanoCpus": int((req.cpus or self.cpus) * 1e9),
                "PidsLimit": self.pids_limit,
                "Binds": [f"{work}:{work}:rw"],
                "Init": True,
                "SecurityOpt": ["no-new-privileges"],
            },
        }

    async def _start_container(
        self, sandbox_id: str, work: Path, folder: Path, req: CreateSandbox
    ) -> Any:
        config = self._config(sandbox_id, work, folder, req)
        name = f"agentfleet-{sandbox_id}"
        try:
            container = await self.client.containers.create(config, name=name)
        except aiodocker.DockerError as e:
            if e.status == 404:
                raise SandboxError(
                    f"docker image {config['Image']!r} not found: build it with "
                    "`agentfleet images build`",
                    500,
                ) from e
            if e.status == 409:  # the name is taken: a sandbox of that id exists already
                raise SandboxError(f"sandbox {sandbox_id} exists already: {e.message}", 409) from e
            raise SandboxError(f"cannot create container: {e.message}", 500) from e
        except BaseException:
            # cancelled: the engine may have made it all the same
            with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, OSError):
                await asyncio.shield(_remove_container(self.client, name))
            raise
        try:
            await container.start()
        except BaseException as e:
            await asyncio.shield(_remove_container(self.client, container.id))
            if isinstance(e, aiodocker.DockerError):
                raise SandboxError(f"cannot start container: {e.message}", 500) from e
            raise
        return container

    async def delete(self, sandbox_id: str) -> None:
        box = self._get(sandbox_id)
        box.deleting = True
        self._boxes.pop(sandbox_id, None)

        async def remove() -> None:
            try:
                await _remove_container(self.client, box.container.id)
            finally:
                with contextlib.suppress(SandboxNotFound):
                    await self.files.delete(sandbox_id)

        await asyncio.shield(remove())

    # files -----------------------------------------------------------------------------
    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        self._get(sandbox_id)
        return await self.files.read_file(sandbox_id, path)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        self._get(sandbox_id)
        await self.files.write_file(sandbox_id, path, data)

    # exec ------------------------------------------------------------------------------
    @staticmethod
    def _env(box: _Box, extra: dict[str, str], token: str) -> dict[str, str]:
        env = command_env(DEFAULT_PATH, str(box.work), "/tmp", extra)
        env[TOKEN_VAR] = token
        return env

    async def _kill_token(self, box: _Box, token: str) -> None:
        """Kill every process of one exec inside the container (best effort, bounded)."""
        if box.deleting:
            return
        try:
            async with asyncio.timeout(10):
                ex = await box.container.exec(
                    ["sh", "-c", _KILLER, "agentfleet-kill", token], user=self.user
                )
                stream = ex.start(detach=False)
                try:
                    while await stream.read_out() is not None:
                        pass
                finally:
                    await stream.close()
        except (aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError) as e:
            if not box.deleting:
                log.warning("could not kill exec %s in %s: %s", token, box.sandbox_id, e)

    async def _exit_code(self, ex: Any) -> int | None:
        deadline = time.monotonic() + 5.0
        while True:
            info = await ex.inspect()
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.01)

    async def _restart(self, box: _Box) -> None:
        """Start a container that stopped (a command killed its ``sleep``); files are kept."""
        log.warning("container of sandbox %s had stopped: restarting it", box.sandbox_id)
        try:
            await box.container.start()
        except aiodocker.DockerError as e:
            if e.status != 304:  # already running
                raise

    async def _wait_stopped(self, box: _Box, within: float = 10.0) -> bool:
        deadline = time.monotonic() + within
        while True:
            info = await box.container.show()
            if not (info.get("State") or {}).get("Running", False):
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)

    async def _run(
        self,
        box: _Box,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        captures: list[OutputCapture],
        output_limit: int,
    ) -> int | None:
        for attempt in (0, 1):
            retry = attempt == 0 and not box.deleting
            capture = OutputCapture(output_limit)
            captures.append(capture)
            try:
                ex = await box.container.exec(
                    argv,
                    stdout=True,
                    stderr=True,
                    environment=env,
                    workdir=str(cwd),
                    user=self.user,
                )
                stream = ex.start(detach=False)
                try:
                    while (msg := await stream.read_out()) is not None:
                        capture.feed(msg.data)
                finally:
                    await stream.close()
                rc = await self._exit_code(ex)
            except aiodocker.DockerError as e:
                if retry and _NOT_RUNNING.search(str(e.message)) and await self._wait_stopped(box):
                    await self._restart(box)
                    continue
                raise
            # 126: the runtime could not exec: the container is stopping (its state may lag)
            if (
                rc == 126
                and retry
                and _NOT_RUNNING.search(bytes(capture.head[:300]).decode(errors="replace"))
                and await self._wait_stopped(box)
            ):
                await self._restart(box)
                continue
            return rc
        return None

    async def exec(self, sandbox_id: str, req: ExecRequest, output_limit: int) -> ExecResult:
        box = self._get(sandbox_id)
        fsb = self.files._get(sandbox_id)
        cwd = await asyncio.to_thread(self.files._resolve_cwd, fsb, req.cwd)
        timeout = req.timeout or self.default_timeout
        token = uuid.uuid4().hex
        env = self._env(box, req.env, token)
        limit = f"{max(timeout, 0.001):.3f}"  # `timeout 0` would mean no limit at all
        argv = ["bash", "-c", _WRAPPER, "agentfleet-exec", limit, req.command]
        captures = [OutputCapture(output_limit)]
        started = time.monotonic()
        returncode: int | None = None
        host_timeout = False
        finished = False
        try:
            try:
                async with asyncio.timeout(timeout + KILL_AFTER_S + HOST_GRACE_S):
                    returncode = await self._run(box, argv, env, cwd, captures, output_limit)
                finished = True
            except TimeoutError:
                host_timeout = True
            except (aiodocker.DockerError, aiohttp.ClientError, OSError) as e:
                if not box.deleting:
                    raise SandboxError(f"docker exec failed: {e}", 500) from e
        finally:
            if not finished and not box.deleting:
                # cancelled, or the host-side deadline passed: nothing of it may survive
                kill = asyncio.ensure_future(self._kill_token(box, token))
                with contextlib.suppress(Exception):  # not CancelledError: the kill goes on
                    await asyncio.wait_for(asyncio.shield(kill), 15)
        elapsed = time.monotonic() - started
        output, truncated = captures[-1].result()
        if box.deleting:
            returncode = -9 if returncode in (None, 0) else returncode
        if returncode is None:
            returncode = -9
        timed_out = host_timeout or (returncode in (124, 137) and elapsed >= timeout)
        if timed_out:
            returncode = 124
            output += f"\n[agentfleet: command timed out after {timeout:g} s and was killed]\n"
        return ExecResult(
            output=output,
            returncode=returncode,
            truncated=truncated,
            timed_out=timed_out,
            duration_s=round(elapsed, 4),
        )
