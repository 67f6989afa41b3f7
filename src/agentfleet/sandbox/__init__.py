"""Sandboxes: where agents' commands run (server, backends, HTTP client, agent environment).

Names are imported lazily (PEP 562), so ``import agentfleet.sandbox.base`` or
``agentfleet.sandbox.client`` loads no server (FastAPI), docker (aiodocker) or psutil code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentfleet._lazy import lazy_exports

if TYPE_CHECKING:
    from agentfleet.sandbox.base import (
        DEFAULT_EXEC_TIMEOUT as DEFAULT_EXEC_TIMEOUT,
        DEFAULT_OUTPUT_LIMIT as DEFAULT_OUTPUT_LIMIT,
        Backend as Backend,
        CreateSandbox as CreateSandbox,
        ExecRequest as ExecRequest,
        ExecResult as ExecResult,
        PathOutsideSandbox as PathOutsideSandbox,
        SandboxBusy as SandboxBusy,
        SandboxError as SandboxError,
        Sandboxes as Sandboxes,
        SandboxInfo as SandboxInfo,
        SandboxNotFound as SandboxNotFound,
        SandboxUnauthorized as SandboxUnauthorized,
        new_sandbox_id as new_sandbox_id,
    )
    from agentfleet.sandbox.capture import OutputCapture as OutputCapture
    from agentfleet.sandbox.client import SandboxClient as SandboxClient
    from agentfleet.sandbox.containers import gc_containers as gc_containers
    from agentfleet.sandbox.docker import DockerBackend as DockerBackend
    from agentfleet.sandbox.env import RemoteDockerEnvironment as RemoteDockerEnvironment
    from agentfleet.sandbox.folders import (
        SandboxFolders as SandboxFolders,
        default_root as default_root,
        gc_all as gc_all,
    )
    from agentfleet.sandbox.process import ProcessBackend as ProcessBackend
    from agentfleet.sandbox.server import (
        create_app as create_app,
        make_backend as make_backend,
        run_server as run_server,
    )
    from agentfleet.sandbox.service import SandboxService as SandboxService

_EXPORTS: dict[str, str] = {
    "DEFAULT_EXEC_TIMEOUT": "agentfleet.sandbox.base",
    "DEFAULT_OUTPUT_LIMIT": "agentfleet.sandbox.base",
    "Backend": "agentfleet.sandbox.base",
    "CreateSandbox": "agentfleet.sandbox.base",
    "ExecRequest": "agentfleet.sandbox.base",
    "ExecResult": "agentfleet.sandbox.base",
    "PathOutsideSandbox": "agentfleet.sandbox.base",
    "SandboxBusy": "agentfleet.sandbox.base",
    "SandboxError": "agentfleet.sandbox.base",
    "Sandboxes": "agentfleet.sandbox.base",
    "SandboxInfo": "agentfleet.sandbox.base",
    "SandboxNotFound": "agentfleet.sandbox.base",
    "SandboxUnauthorized": "agentfleet.sandbox.base",
    "new_sandbox_id": "agentfleet.sandbox.base",
    "OutputCapture": "agentfleet.sandbox.capture",
    "SandboxClient": "agentfleet.sandbox.client",
    "gc_containers": "agentfleet.sandbox.containers",
    "DockerBackend": "agentfleet.sandbox.docker",
    "RemoteDockerEnvironment": "agentfleet.sandbox.env",
    "SandboxFolders": "agentfleet.sandbox.folders",
    "default_root": "agentfleet.sandbox.folders",
    "gc_all": "agentfleet.sandbox.folders",
    "ProcessBackend": "agentfleet.sandbox.process",
    "create_app": "agentfleet.sandbox.server",
    "make_backend": "agentfleet.sandbox.server",
    "run_server": "agentfleet.sandbox.server",
    "SandboxService": "agentfleet.sandbox.service",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
