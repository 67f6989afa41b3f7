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

A local Ray started here is Ray's single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
Ray's default on macOS and Windows): its node address is 127.0.0.1, so every Ray port (and
the run's evaluation server, on the node's address) listens on loopback only. Otherwise
Ray turns ``127.0.0.1`` into the host's network address and listens there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from agentfleet.http.auth import is_loopback

__all__ = ["ACTOR_ENV", "actor_runtime_env", "init_ray"]

ACTOR_ENV = {"RAY_USE_UVLOOP": "0"}
# Ray's single-machine mode for a local Ray: the node's address stays 127.0.0.1
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

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
def _single_machine() -> Iterator[None]:
    """Ray's single-machine mode while Ray starts: Ray reads LOOPBACK_ENV once, when it is
    imported (this process may have imported it already), into ``ENABLE_RAY_CLUSTER``,
    which it consults when it resolves the node's address."""
    from ray._private import ray_constants

    before = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if before is None:  # a Ray without the switch: its own choice stands
        yield
        return
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


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


def _on_loopback(address: str | None) -> bool:
    """Whether ``address`` (``host:port``) is a Ray on this machine's loopback (a local
    Ray started by :func:`init_ray`); ``auto`` and ``ray://`` addresses are not."""
    if not address or "://" in address or ":" not in address:
        return False
    return is_loopback(address.rsplit(":", 1)[0].strip("[]"))


def init_ray(address: str | None = None, **kwargs: Any) -> None:
    """``ray.init(address=address, **kwargs)``; ``None`` or ``"local"`` (and no
    ``$RAY_ADDRESS``): a new local Ray on 127.0.0.1 only, dashboard off, whose workers run
    asyncio's loop; an address on 127.0.0.1 joins such a Ray. Keeps a SIGTERM handler the
    caller had set."""
    import ray

    if address == "local":
        address = None
    local = address is None and not os.environ.get("RAY_ADDRESS")
    # the caller's own RAY_USE_UVLOOP wins; then the actors carry ACTOR_ENV themselves
    prepared = local and all(os.environ.get(k, v) == v for k, v in ACTOR_ENV.items())
    with contextlib.ExitStack() as stack:
        stack.enter_context(_keep_sigterm_handler())
        if local:
            kwargs.setdefault("include_dashboard", False)
            kwargs.setdefault("_node_ip_address", "127.0.0.1")
            stack.enter_context(_environ(ACTOR_ENV))
        if local or _on_loopback(address or os.environ.get("RAY_ADDRESS")):
            # joining a Ray on 127.0.0.1 needs the same mode: this process's node address
            # must be that Ray's node's, not the host's network address
            stack.enter_context(_environ(LOOPBACK_ENV))
            stack.enter_context(_single_machine())
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
