"""DockerBackend: one container per sandbox, commands as ``docker exec``, over aiodocker.

Layout: the sandbox's folder is made on the host by the same
:class:`~agentfleet.sandbox.folders.SandboxFolders` as the process backend's
(``<root>/<sandbox_id>/work`` holding the task's repo as a git repo, the marker file beside it),
and ``work`` is bind-mounted read-write into the container *at the same path*. So the workdir
reported to clients, the paths commands see and the paths ``read_file``/``write_file`` check are
one and the same, and symlinks made inside the container resolve the same way on the host
(the confinement checks of the process backend are reused unchanged). This needs the engine to
run on this machine (a local socket), which is what ``.ci/run`` sets up.

Containers run ``sleep <ttl + 10 min>`` under ``docker-init`` with no network, memory / CPU /
pids limits, ``no-new-privileges`` and the server's own uid:gid (so the server can always delete
what commands leave in the workdir), and carry agentfleet's labels (owner, sandbox, run, expiry,
owner's host / pid, host folder: :mod:`agentfleet.sandbox.containers`, which also finds and
removes the containers of dead servers).

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
import dataclasses
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp

from agentfleet.sandbox import image_box
from agentfleet.sandbox.base import (
    DEFAULT_EXEC_TIMEOUT,
    CreateSandbox,
    ExecRequest,
    ExecResult,
    SandboxError,
    SandboxNotFound,
)
from agentfleet.sandbox.capture import OutputCapture, exec_result
from agentfleet.sandbox.command_env import DEFAULT_PATH
from agentfleet.sandbox.containers import (
    DEFAULT_IMAGE,
    Limits,
    Resources,
    close_client,
    connect,
    host_config,
    reap_containers,
    remove_container,
    sandbox_labels,
)
from agentfleet.sandbox.docker_exec import (
    HOST_GRACE_S,
    KILL_AFTER_S,
    exec_argv,
    exec_env,
    exec_once,
    kill_token,
    not_running,
    restart,
    wait_stopped,
)
from agentfleet.sandbox.folders import (
    MAX_FILE_BYTES,
    SandboxFolder,
    SandboxFolders,
)
from agentfleet.sandbox.image_box import ImageNaming, ImageSource, PullPolicy

log = logging.getLogger(__name__)

CONTAINER_LINGER_S = 600  # containers stop by themselves this long after their ttl


@dataclass
class _Box:
    sandbox_id: str
    container: Any  # aiodocker DockerContainer
    folder: SandboxFolder  # on the host; its workdir is bind-mounted at the same path
    deleting: bool = False
    source: ImageSource | None = None  # an image task: its repository is in the image


class DockerBackend:
    """Sandboxes as containers of a local Docker engine (see the module's docstring).

    Args:
        image: image of the containers (``CreateSandbox.image`` may name another one, if it
            is ``image`` or one of ``allow_images``; any other: 422).
        root: host folder of the work folders (default ``$TMPDIR/agentfleet-sandboxes``).
        memory_mb, cpus, pids_limit: container limits, and the maxima of a request's own
            (``CreateSandbox.memory_mb`` / ``cpus`` / ``pids_limit`` may ask for less; more
            is 422). Swap is not allowed beyond the memory limit. None: no limit.
        file_size_mb, cpu_time_s: ulimits FSIZE / CPU of the containers (None: none).
        allow_images: images a create request may name besides ``image``.
        network: docker network mode; ``"none"`` (the default) means no network at all.
        user: ``uid:gid`` commands run as (default: this server's own, so files they make
            stay deletable by the server).
        max_file_bytes: size cap of ``read_file`` / ``write_file`` (413 beyond).
        orphan_sweep_s: how often containers of dead servers (and expired ones) are removed,
            besides once at start (0: only at start).
        url: the engine (default ``DOCKER_HOST`` or ``/var/run/docker.sock``).
        image_naming: how image tasks' images are renamed (``--image-map``,
            ``--registry-prefix``); pull: when they are pulled (``never``, ``missing``,
            ``always``). Image tasks: :mod:`agentfleet.sandbox.image_box`.

    A request that names no timeout gets ``DEFAULT_EXEC_TIMEOUT`` (the service fills in its
    own default before it calls the backend).
    """

    name = "docker"

    def __init__(
        self,
        image: str = DEFAULT_IMAGE,
        *,
        root: Path | str | None = None,
        memory_mb: int | None = 2048,
        cpus: float | None = 1.0,
        pids_limit: int | None = 512,
        file_size_mb: int | None = None,
        cpu_time_s: int | None = None,
        network: str = "none",
        user: str | None = None,
        max_file_bytes: int = MAX_FILE_BYTES,
        orphan_sweep_s: float = 300.0,
        url: str | None = None,
        allow_images: Iterable[str] = (),
        image_naming: ImageNaming | None = None,
        pull: PullPolicy = "missing",
    ) -> None:
        self.image = image
        self.image_naming = image_naming or ImageNaming()
        self.pull = pull
        self.limits = Limits(
            image, memory_mb, cpus, pids_limit, frozenset(allow_images), file_size_mb, cpu_time_s
        )
        # the host folders (copy, git, marker, file access, reaping of dead servers' folders)
        self.folders = SandboxFolders(root, max_file_bytes=max_file_bytes)
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.pids_limit = pids_limit
        self.network = network
        self.user = user if user is not None else f"{os.getuid()}:{os.getgid()}"
        self.orphan_sweep_s = orphan_sweep_s
        self.url = url
        self.instance_id = self.folders.instance_id
        self.host = ""
        self._client: aiodocker.Docker | None = None
        self._connector: aiohttp.BaseConnector | None = None
        self._boxes: dict[str, _Box] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._started = False

    @property
    def root(self) -> Path:
        """The host folder of the sandboxes' folders (resolved once started)."""
        return self.folders.root

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
            await self.folders.start()  # makes root, reaps folders of dead servers
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

    async def reap_orphans(self) -> list[str]:
        """Remove containers (and folders) of dead server instances and expired ones."""
        return await reap_containers(self.client, instance_id=self.instance_id, host=self.host)

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
            await self.folders.aclose()
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
        return self._get(sandbox_id).folder.dir

    def _get(self, sandbox_id: str) -> _Box:
        box = self._boxes.get(sandbox_id)
        if box is None:
            raise SandboxNotFound(f"no sandbox {sandbox_id!r}")
        return box

    # create / delete -------------------------------------------------------------------
    def resources(self, req: CreateSandbox) -> Resources:
        """The image and limits of ``req``'s container (422 beyond ours: :class:`Limits`)."""
        return self.limits.resolve(req)

    async def create(
        self, sandbox_id: str, source_dir: Path | ImageSource | None, req: CreateSandbox
    ) -> str:
        source = source_dir if isinstance(source_dir, ImageSource) else None
        own_image = source is not None and req.image is None
        res = self.resources(req.model_copy(update={"image": None}) if own_image else req)
        if source is not None and own_image:  # the task's image: allowed, its dataset names it
            image = self.image_naming.image_for(source.task_id, source.image)
            res = dataclasses.replace(res, image=image)
        if not self._started:
            await self.start()
        if sandbox_id in self._boxes:
            raise SandboxError(f"sandbox {sandbox_id} already exists", 409)
        if source is not None:
            await image_box.ensure_image(self.client, res.image, self.pull)
        host_dir = None if isinstance(source_dir, ImageSource) else source_dir
        folder = await self.folders.create(sandbox_id, host_dir, req)
        try:
            config = self._config(sandbox_id, folder.work, folder.dir, req, res, source)
            container = await self._start_container(sandbox_id, config)
        except BaseException:
            await asyncio.shield(self.folders.delete(sandbox_id))
            raise
        box = _Box(sandbox_id, container, folder, source=source)
        self._boxes[sandbox_id] = box
        if source is None:
            return str(folder.work)
        try:  # the image's HEAD is the baseline (refs/agentfleet/base)
            req_base = ExecRequest(command=image_box.BASE_SCRIPT, timeout=60)
            done = await self.exec(sandbox_id, req_base, 4000)
            if done.returncode != 0:
                raise image_box.no_repo_error(source, done.output)
        except BaseException:
            await asyncio.shield(self.delete(sandbox_id))
            raise
        return source.workdir

    def _config(
        self,
        sandbox_id: str,
        work: Path,
        folder: Path,
        req: CreateSandbox,
        res: Resources,
        source: ImageSource | None = None,
    ) -> dict[str, Any]:
        labels = sandbox_labels(
            owner=self.instance_id,
            sandbox_id=sandbox_id,
            run=req.run,
            expires=time.time() + req.ttl_s,
            host=self.host,
            folder=folder,
            pid_started=self.folders.pid_started,  # set once started: the folder was just made
            pid_start_ticks=self.folders.pid_start_ticks,
        )
        config: dict[str, Any] = {
            "Image": res.image,
            "Cmd": ["sleep", str(math.ceil(req.ttl_s) + CONTAINER_LINGER_S)],
            "Labels": labels,
            "User": self.user,
            "WorkingDir": str(work),
            "Env": [f"PATH={DEFAULT_PATH}", f"HOME={work}", "LANG=C.UTF-8"],
            "HostConfig": host_config(res, work, self.network),
        }
        return config if source is None else image_box.image_config(config, source)

    async def _start_container(self, sandbox_id: str, config: dict[str, Any]) -> Any:
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
                await asyncio.shield(remove_container(self.client, name))
            raise
        try:
            await container.start()
        except BaseException as e:
            await asyncio.shield(remove_container(self.client, container.id))
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
                await remove_container(self.client, box.container.id)
            finally:
                with contextlib.suppress(SandboxNotFound):
                    await self.folders.delete(sandbox_id)

        await asyncio.shield(remove())

    # files -----------------------------------------------------------------------------
    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        box = self._get(sandbox_id)
        if box.source is not None:
            where = image_box.container_path(box.source.workdir, path)
            return await image_box.read_file(box.container, where, self.folders.max_file_bytes)
        return await self.folders.read_file(sandbox_id, path)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        box = self._get(sandbox_id)
        if box.source is not None:
            if len(data) > self.folders.max_file_bytes:
                cap = self.folders.max_file_bytes
                raise SandboxError(f"{len(data)} bytes is over the {cap} bytes file cap", 413)
            where = image_box.container_path(box.source.workdir, path)
            return await image_box.write_file(box.container, where, data)
        await self.folders.write_file(sandbox_id, path, data)

    # exec (the command itself: docker_exec.py) ----------------------------------------
    def _user(self, box: _Box) -> str:
        return image_box.IMAGE_USER if box.source is not None else self.user

    async def _kill_token(self, box: _Box, token: str) -> None:
        """Kill every process of one exec inside the container (best effort, bounded)."""
        if box.deleting:
            return
        try:
            await kill_token(box.container, self._user(box), token)
        except (aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError) as e:
            if not box.deleting:
                log.warning("could not kill exec %s in %s: %s", token, box.sandbox_id, e)

    async def _restart(self, box: _Box) -> None:
        log.warning("container of sandbox %s had stopped: restarting it", box.sandbox_id)
        await restart(box.container)

    async def _run(
        self,
        box: _Box,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        captures: list[OutputCapture],
        output_limit: int,
    ) -> int | None:
        """The exec, once more in a restarted container if its container had stopped."""
        for attempt in (0, 1):
            retry = attempt == 0 and not box.deleting
            capture = OutputCapture(output_limit)
            captures.append(capture)
            try:
                rc = await exec_once(box.container, argv, env, cwd, self._user(box), capture)
            except aiodocker.DockerError as e:
                if retry and not_running(str(e.message)) and await wait_stopped(box.container):
                    await self._restart(box)
                    continue
                raise
            head = bytes(capture.head[:300]).decode(errors="replace")
            if rc == 126 and head.startswith("OCI runtime exec failed") and "chdir to cwd" in head:
                raise SandboxError(f"cwd {str(cwd)!r} is no directory in the sandbox", 400)
            # 126: the runtime could not exec: the container is stopping (its state may lag)
            if rc == 126 and retry and not_running(head) and await wait_stopped(box.container):
                await self._restart(box)
                continue
            return rc
        return None

    async def exec(self, sandbox_id: str, req: ExecRequest, output_limit: int) -> ExecResult:
        box = self._get(sandbox_id)
        timeout = req.timeout or DEFAULT_EXEC_TIMEOUT
        token = uuid.uuid4().hex
        if box.source is not None:  # in the image's tree, its environment activated
            cwd = Path(image_box.container_path(box.source.workdir, req.cwd or "."))
            env = exec_env(Path(image_box.IMAGE_HOME), req.env, token)
            argv = exec_argv(timeout, image_box.activated(req.command, box.source.env_activate))
        else:
            cwd = await self.folders.resolve_cwd(box.folder, req.cwd)
            env = exec_env(box.folder.work, req.env, token)
            argv = exec_argv(timeout, req.command)
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
        if box.deleting:
            returncode = -9 if returncode in (None, 0) else returncode
        timed_out = host_timeout or (returncode in (124, 137) and elapsed >= timeout)
        return exec_result(
            captures[-1], returncode, timed_out=timed_out, timeout=timeout, elapsed=elapsed
        )
