"""Sandboxes: where agents' commands run (server, backends, HTTP client, agent environment)."""

from agentfleet.sandbox.base import (
    DEFAULT_EXEC_TIMEOUT,
    DEFAULT_OUTPUT_LIMIT,
    Backend,
    CreateSandbox,
    ExecRequest,
    ExecResult,
    PathOutsideSandbox,
    SandboxError,
    Sandboxes,
    SandboxInfo,
    SandboxNotFound,
    new_sandbox_id,
)
from agentfleet.sandbox.client import SandboxClient
from agentfleet.sandbox.docker import DockerBackend, gc_containers
from agentfleet.sandbox.env import RemoteDockerEnvironment
from agentfleet.sandbox.process import OutputCapture, ProcessBackend, default_root, gc_all
from agentfleet.sandbox.server import create_app, make_backend, run_server
from agentfleet.sandbox.service import SandboxService

__all__ = [
    "DEFAULT_EXEC_TIMEOUT",
    "DEFAULT_OUTPUT_LIMIT",
    "Backend",
    "CreateSandbox",
    "DockerBackend",
    "ExecRequest",
    "ExecResult",
    "OutputCapture",
    "PathOutsideSandbox",
    "ProcessBackend",
    "RemoteDockerEnvironment",
    "SandboxClient",
    "SandboxError",
    "SandboxInfo",
    "SandboxNotFound",
    "SandboxService",
    "Sandboxes",
    "create_app",
    "default_root",
    "gc_all",
    "gc_containers",
    "make_backend",
    "new_sandbox_id",
    "run_server",
]
