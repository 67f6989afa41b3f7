"""Starting Ray and placing agentfleet's actors: shared by the Ray backend, the Ray evaluation
workers and their benchmarks. Imports Ray inside its functions only.

agentfleet's actors run on asyncio's own event loop, as every agentfleet server does (Ray
would pick uvloop). A worker reads ``RAY_USE_UVLOOP`` from its environment when it makes an
actor's loop, before it imports the actor's module. A local Ray that :func:`init_ray` starts
has it in every worker's environment (inherited from this process), so its actors need no
``runtime_env``: any ``runtime_env``, even ``env_vars`` alone, puts Ray's runtime-env agent
on the path of every actor start, where one start stalled for minutes on a loaded machine.
On a cluster started elsewhere the actors carry it in their ``runtime_env``
(:func:`actor_runtime_env`); ``RAY_USE_UVLOOP=0 ray start ...`` makes that a no-op.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["ACTOR_ENV", "actor_runtime_env", "init_ray"]

ACTOR_ENV = {"RAY_USE_UVLOOP": "0"}

# GCS addresses of the local Rays init_ray started with ACTOR_ENV in their environment.
_PREPARED: set[str] = set()


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """Undo ``ray.init``'s SIGTERM handler (``sys.exit``) when the caller had set its own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if previous not in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    """``extra`` in ``os.environ`` (where unset) for the block; put back afterwards."""
    added = [k for k in extra if k not in os.environ]
    os.environ.update({k: extra[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _started_here() -> bool:
    """Whether this process's ``ray.init`` started the head node (not connected to one)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # no public call says so
    try:
        return bool(node is not None and node.is_head())
    except Exception:  # a Ray without it: treat the cluster as started elsewhere
        return False


def init_ray(address: str | None = None, **kwargs: Any) -> None:
    """``ray.init(address=address, **kwargs)``; ``None`` or ``"local"`` (and no
    ``$RAY_ADDRESS``): a new local Ray on 127.0.0.1, dashboard off, whose workers run
    asyncio's loop. Keeps a SIGTERM handler the caller had set."""
    import ray

    if address == "local":
        address = None
    local = address is None and not os.environ.get("RAY_ADDRESS")
    # the caller's own RAY_USE_UVLOOP wins; then the actors carry ACTOR_ENV themselves
    prepared = local and all(os.environ.get(k, v) == v for k, v in ACTOR_ENV.items())
    if local:
        kwargs.setdefault("include_dashboard", False)
        kwargs.setdefault("_node_ip_address", "127.0.0.1")
    with _keep_sigterm_handler(), _environ(ACTOR_ENV if local else {}):
        ray.init(address=address, **kwargs)
    if prepared and _started_here():
        _PREPARED.add(ray.get_runtime_context().gcs_address)


def actor_runtime_env(runtime_env: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The ``runtime_env`` for an agentfleet actor: ``runtime_env`` plus :data:`ACTOR_ENV`
    in its ``env_vars``, unless the workers have it already (a Ray :func:`init_ray`
    started); ``None`` when nothing is left."""
    import ray

    env = dict(runtime_env or {})
    if ray.get_runtime_context().gcs_address not in _PREPARED:
        env["env_vars"] = {**ACTOR_ENV, **env.get("env_vars", {})}
    return env or None
