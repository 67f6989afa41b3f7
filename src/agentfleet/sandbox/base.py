"""Shapes shared by the sandbox server, its backends and its clients."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field, field_validator
from pydantic_core import PydanticCustomError

from agentfleet.tasks import DEFAULT_DATASET

# bytes of one command: `bash -c COMMAND` passes it as one argument, which Linux caps at
# 128 KiB (MAX_ARG_STRLEN), with room for the prefixes the backends add
MAX_COMMAND_BYTES = 128_000
DEFAULT_IMAGE = "agentfleet-base:bookworm"  # the docker backend's sandbox image
DEFAULT_OUTPUT_LIMIT = 100_000  # characters kept from a command's output (head + tail)
DEFAULT_EXEC_TIMEOUT = 60.0
DEFAULT_TTL_S = 3600.0
TOKEN_ENV = "AGENTFLEET_SANDBOX_TOKEN"  # the sandbox server's bearer token, both sides
MAX_TTL_S = 7 * 24 * 3600.0
DEFAULT_MAX_SANDBOXES = 512  # alive at once per server; one more answers 429
DEFAULT_MAX_EXECS = 256  # commands running at once per server; one more answers 429
DEFAULT_MAX_EXECS_PER_SANDBOX = 8  # commands running at once in one sandbox
DEFAULT_REAP_INTERVAL_S = 30.0  # seconds between deletions of expired sandboxes
DEFAULT_STOP_GRACE_S = 10.0  # running commands' time to finish once the server stops
# The largest limits a create request may ask for, beyond any machine: the kernel's own
# numbers (CFS quota in microseconds, bytes, rlimits) must not overflow. Unset: no limit.
MAX_CPUS = 4096.0
MAX_SIZE_MB = 1 << 40  # memory and file size: 2**60 bytes
MAX_PIDS = 4_194_304  # the kernel's PID_MAX_LIMIT
MAX_CPU_TIME_S = 1 << 40
# client-chosen sandbox ids: also a folder name and part of a container name
SANDBOX_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{2,63}$"


def new_sandbox_id() -> str:
    """A fresh sandbox id (``sb-`` + 12 hex digits); clients may pick theirs this way."""
    return f"sb-{secrets.token_hex(6)}"


class SandboxError(Exception):
    """A sandbox operation failed; ``status`` is the HTTP status that fits."""

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class SandboxNotFound(SandboxError):
    status = 404


class PathOutsideSandbox(SandboxError):
    status = 400


class SandboxBusy(SandboxError):
    """The server is at a limit (sandboxes alive, execs running): 429, try again after
    ``retry_after`` seconds."""

    status = 429

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SandboxUnauthorized(SandboxError):
    """The sandbox server wants a bearer token this client did not send (or another one)."""

    status = 401


def _check_utf8(value: Any) -> None:
    """Raise if ``value`` (a string, or one inside a dict or list) is not UTF-8 encodable."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PydanticCustomError(
                "string_not_utf8",
                "string must be valid Unicode (no lone surrogate at {position})",
                {"position": exc.start},
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_utf8(key)
            _check_utf8(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_utf8(item)


class RequestModel(BaseModel):
    """A request body the sandbox server takes: every string in it (dict keys too) must be
    encodable as UTF-8. A lone surrogate (JSON ``"\\udc80"``) is refused (422) before
    anything is made, so nothing echoes it back into a response that cannot be encoded."""

    @field_validator("*")
    @classmethod
    def _utf8_strings(cls, value: Any) -> Any:
        _check_utf8(value)
        return value


class CreateSandbox(RequestModel):
    """Request to create a sandbox: from a task's repository, or an empty one.

    ``sandbox_id``: chosen by the client (so it can delete the sandbox even if the create
    call never returned); taken already: 409. ``ttl_s`` left unset: the server's default.
    """

    sandbox_id: str | None = Field(default=None, pattern=SANDBOX_ID_PATTERN)
    task_id: str | None = None
    dataset: str = DEFAULT_DATASET
    image: str | None = None
    ttl_s: float = Field(default=DEFAULT_TTL_S, gt=0, le=MAX_TTL_S)
    # limits of this sandbox (both backends; image: docker only); unset: the server's,
    # above them: 422; above MAX_* (a server without that limit): 422 too
    cpus: float | None = Field(default=None, gt=0, le=MAX_CPUS)
    memory_mb: int | None = Field(default=None, gt=0, le=MAX_SIZE_MB)
    pids_limit: int | None = Field(default=None, gt=0, le=MAX_PIDS)
    file_size_mb: int | None = Field(default=None, gt=0, le=MAX_SIZE_MB)  # largest file written
    cpu_time_s: int | None = Field(default=None, gt=0, le=MAX_CPU_TIME_S)  # per process
    run: str = ""  # label: the fleet run that owns it


class SandboxInfo(BaseModel):
    sandbox_id: str
    backend: str
    workdir: str
    task_id: str | None = None
    dataset: str | None = None
    created_at: float
    expires_at: float
    run: str = ""  # the create request's label (e.g. the fleet run that owns it)


# Variables that make bash run code before the command's first line (and so before its
# limits' ``ulimit``): refused in a request's ``env``.
SHELL_STARTUP_ENV = frozenset({"BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4"})

# What the validators below refuse, said in the OpenAPI schema too (documentation only).
_NO_NUL: dict[str, Any] = {"pattern": "^[^\\u0000]*$"}
_ENV_SCHEMA: dict[str, Any] = {
    "propertyNames": {
        "pattern": "^(?!BASH_FUNC_)[^=\\u0000]+$",
        "not": {"enum": sorted(SHELL_STARTUP_ENV)},
    },
    "additionalProperties": {"type": "string", **_NO_NUL},
}


class ExecRequest(RequestModel):
    """One command. ``env`` is set for the command only (inside the sandbox): names are
    non-empty, without ``=`` or NUL, not a shell start-up variable (``BASH_ENV``,
    ``SHELLOPTS``, an exported function ``BASH_FUNC_*``...); no NUL in values, the command
    or ``cwd`` (422)."""

    command: str = Field(min_length=1, max_length=1_000_000, json_schema_extra=_NO_NUL)
    cwd: str = Field(default="", json_schema_extra=_NO_NUL)
    timeout: float | None = Field(default=None, gt=0, le=24 * 3600)
    env: dict[str, str] = Field(default_factory=dict, json_schema_extra=_ENV_SCHEMA)

    @field_validator("command", "cwd")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\0" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("command")
    @classmethod
    def _one_argument(cls, command: str) -> str:
        if (n := len(command.encode("utf-8", "surrogatepass"))) > MAX_COMMAND_BYTES:
            raise ValueError(
                f"the command is {n} bytes: at most {MAX_COMMAND_BYTES} (it is one argument "
                "of bash -c, which the kernel caps); write long content with PUT /files"
            )
        return command

    @field_validator("env")
    @classmethod
    def _env_entries(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not name or "=" in name or "\0" in name:
                raise ValueError(f"env name {name!r}: non-empty, without '=' or NUL")
            if name in SHELL_STARTUP_ENV or name.startswith("BASH_FUNC_"):
                raise ValueError(f"env name {name!r}: shell start-up variables are refused")
            if "\0" in value:
                raise ValueError(f"env value of {name!r} contains NUL")
        return env


class ExecResult(BaseModel):
    output: str
    returncode: int
    truncated: bool = False
    timed_out: bool = False
    duration_s: float = 0.0


@runtime_checkable
class Sandboxes(Protocol):
    """What the runner and the evaluator need: served in-process or over HTTP alike."""

    async def create(self, req: CreateSandbox) -> SandboxInfo: ...

    async def exec(
        self,
        sandbox_id: str,
        command: str,
        *,
        cwd: str = "",
        timeout: float | None = None,
        env: dict[str, str] | None = None,
    ) -> ExecResult: ...

    async def read_file(self, sandbox_id: str, path: str) -> bytes: ...

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None: ...

    async def delete(self, sandbox_id: str) -> None: ...


class Backend(Protocol):
    """A place where sandboxes live (``process``, ``docker``). Knows nothing of tasks."""

    name: str

    async def start(self) -> None: ...

    async def create(
        self, sandbox_id: str, source_dir: Path | None, req: CreateSandbox
    ) -> str:  # returns the workdir as seen by commands
        ...

    async def exec(self, sandbox_id: str, req: ExecRequest, output_limit: int) -> ExecResult: ...

    async def read_file(self, sandbox_id: str, path: str) -> bytes: ...

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None: ...

    async def delete(self, sandbox_id: str) -> None: ...

    async def aclose(self) -> None: ...
