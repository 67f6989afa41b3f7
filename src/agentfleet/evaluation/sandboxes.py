"""Where an evaluator runs: :func:`open_sandboxes` (a sandbox server, or in-process
sandboxes) and the real evaluator over them (:func:`real_evaluator`), for the evaluation
server and for remote workers; how the server builds its evaluator from a factory."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentfleet.evaluation.submission import EvaluatorLike

if TYPE_CHECKING:
    from agentfleet.evaluation.config import EvalConfig


@asynccontextmanager
async def open_sandboxes(
    sandbox_url: str | None = None,
    sandbox_token: str | None = None,
    dataset_roots: Sequence[str | Path] = (),
    confine: str = "auto",
) -> AsyncIterator[Any]:
    """The sandboxes an evaluator runs in: the sandbox server at ``sandbox_url`` (with
    ``sandbox_token``, default ``$AGENTFLEET_SANDBOX_TOKEN``), else an in-process sandbox
    service (process backend, ``confine``, datasets: the bundled ones and under
    ``dataset_roots``), closed on exit."""
    if sandbox_url is not None:
        from agentfleet.sandbox.client import SandboxClient

        yield SandboxClient(sandbox_url, token=sandbox_token)
        return
    from agentfleet.sandbox.process import ProcessBackend
    from agentfleet.sandbox.service import SandboxService

    backend = ProcessBackend(confine=confine)
    async with SandboxService(backend, dataset_roots=dataset_roots) as service:
        yield service


@asynccontextmanager
async def real_evaluator(
    sandbox_url: str | None = None,
    config: EvalConfig | None = None,
    sandbox_token: str | None = None,
    dataset_roots: Sequence[str | Path] = (),
    confine: str = "auto",
) -> AsyncIterator[EvaluatorLike]:
    """The real :class:`~agentfleet.evaluation.evaluator.Evaluator` (with ``config``, default
    ``EvalConfig()``) over :func:`open_sandboxes`. Datasets load from the bundled ones and
    ``dataset_roots`` only (the in-process sandboxes' too)."""
    from agentfleet.evaluation.evaluator import Evaluator

    async with open_sandboxes(sandbox_url, sandbox_token, dataset_roots, confine) as boxes:
        yield Evaluator(boxes, config, dataset_roots=dataset_roots)


def default_evaluator_factory(
    sandbox_url: str | None = None,
    config: EvalConfig | None = None,
    sandbox_token: str | None = None,
    dataset_roots: Sequence[str | Path] = (),
    confine: str = "auto",
) -> Callable[[], AbstractAsyncContextManager[EvaluatorLike]]:
    """A factory for :func:`create_app` that builds the real evaluator at start-up."""
    return lambda: real_evaluator(sandbox_url, config, sandbox_token, dataset_roots, confine)


EvaluatorFactory = Callable[[], Any]
"""Returns an evaluator, an awaitable of one, or an async context manager yielding one."""


async def build_evaluator(factory: EvaluatorFactory, stack: AsyncExitStack) -> Any:
    """What ``factory`` makes, entered (or its ``aclose`` pushed) on ``stack``."""
    made = factory()
    if inspect.isawaitable(made):
        made = await made
    if not hasattr(made, "evaluate") and hasattr(made, "__aenter__"):
        return await stack.enter_async_context(made)
    if hasattr(made, "aclose"):
        stack.push_async_callback(made.aclose)
    return made


__all__ = [
    "EvaluatorFactory",
    "build_evaluator",
    "default_evaluator_factory",
    "open_sandboxes",
    "real_evaluator",
]
