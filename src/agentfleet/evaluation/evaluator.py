"""The evaluation core: is a submitted patch correct, how much faster is it, what reward.

``await Evaluator(sandboxes).evaluate(req)`` returns an ``EvalResult(reward, speedup,
info)``. The rules are in docs/evaluation.md; in short:

1. not submitted -> reward 0, speedup 0, nothing run;
2. the patch is ``req.result`` or the ``git diff`` of sandbox ``req.container_id``;
3. the patch is applied to a fresh sandbox of the task, the task's test files are put back
   as they were, and the task's tests must pass;
4. the workload's stdout must equal the unmodified repository's;
5. the workload is timed in both sandboxes, interleaved, from inside the sandboxes;
6. speedup = median of the rounds' baseline / candidate ratios -> reward (reward.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agentfleet.evaluation import image_eval
from agentfleet.evaluation.config import EvalConfig, TimingProtocol
from agentfleet.evaluation.eval_pool import SandboxPool as _Pool, job_label
from agentfleet.evaluation.patches import (
    BadSubmission,
    apply_patch,
    check_patch_applies,
    count_patch_lines,
    output_tail,
    restore_test_files,
    sandbox_diff,
)
from agentfleet.evaluation.pinning import PinnedSandboxes
from agentfleet.evaluation.reference_arm import (
    Reference,
    candidate_as_reference,
    prepare_reference,
    tree_id,
)
from agentfleet.evaluation.reward import RewardConfig, compute_reward
from agentfleet.evaluation.schema import EvalRequest, EvalResult
from agentfleet.evaluation.speedup import (
    CheckedRun,
    Samples,
    TimingError,
    measure,
    run_checked,
)
from agentfleet.evaluation.timing import decided_early, more_rounds, timing_stats
from agentfleet.http.retry import is_transport_error
from agentfleet.sandbox.base import (
    CreateSandbox,
    ExecResult,
    SandboxError,
    Sandboxes,
    SandboxNotFound,
)
from agentfleet.tasks.task import Task, TaskNotFound, load_dataset

__all__ = [
    "BadSubmission",
    "EvalConfig",
    "Evaluator",
    "RewardConfig",
    "TaskNotFound",
    "count_patch_lines",
]

log = logging.getLogger("agentfleet.evaluation")

SUBMITTED = "Submitted"


class _Outcome(Exception):
    """Ends an evaluation early with a status (reward 0)."""

    def __init__(self, status: str, **info: Any) -> None:
        super().__init__(status)
        self.status = status
        self.info = info


def _check_step(res: ExecResult, status: str, what: str) -> None:
    """Ends the evaluation with ``status`` if the step ``res`` failed or timed out."""
    if res.timed_out or res.returncode != 0:
        raise _Outcome(
            status,
            **{
                f"{what}_returncode": res.returncode,
                f"{what}_timed_out": res.timed_out,
                f"{what}_output": output_tail(res.output),
            },
        )


def _resolve_task(dataset: str, instance_id: str, split: str, roots: tuple[Path, ...] = ()) -> Task:
    """The task, which must belong to ``split``; :class:`TaskNotFound` otherwise (also for a
    dataset that is neither bundled nor under ``roots``)."""
    ds = load_dataset(dataset, roots)
    task = ds.task(instance_id)
    if instance_id not in ds.task_ids(split):  # an unknown split raises TaskNotFound too
        in_splits = [name for name, ids in ds.splits.items() if instance_id in ids]
        raise TaskNotFound(
            f"task {instance_id!r} is not in split {split!r} of dataset {ds.name!r} "
            f"(it is in: {', '.join(in_splits) or 'none'})"
        )
    return task


def _read_solution(task: Task) -> str:
    return task.solution_patch


class Evaluator:
    """Evaluates submissions against tasks using any :class:`Sandboxes` (in-process
    service or HTTP client).

    ``dataset_roots``: a request's ``dataset_name`` loads only when it is a bundled dataset
    or a folder under one of these (else :class:`TaskNotFound`, 404 on the server); the
    sandboxes it creates name the same dataset, so their server needs the same roots.
    """

    def __init__(
        self,
        sandboxes: Sandboxes,
        config: EvalConfig | None = None,
        *,
        dataset_roots: Iterable[str | Path] = (),
    ) -> None:
        # every command runs on the current worker's CPU set, if it has one
        self.sandboxes: Sandboxes = PinnedSandboxes(sandboxes)
        self.config = config or EvalConfig()
        self.dataset_roots = tuple(Path(r) for r in dataset_roots)
        self._timing_slots: asyncio.Semaphore | None = (
            asyncio.Semaphore(self.config.timing_concurrency)
            if self.config.timing_concurrency
            else None
        )
        self._cleanups: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ entry points

    async def check(self, req: EvalRequest) -> None:
        """Cheap validation at submit time (the job server calls it before queueing):
        raises :class:`TaskNotFound` or :class:`BadSubmission` as :meth:`evaluate` would.
        A request that was not submitted is always accepted."""
        if req.exit_status != SUBMITTED:
            return
        task = await asyncio.to_thread(
            _resolve_task, req.dataset_name, req.instance_id, req.split, self.dataset_roots
        )
        if req.result is not None:
            if req.result.strip() and not task.is_image_task:  # no host copy of an image's
                await check_patch_applies(task, req.result)
            return
        if not req.container_id:
            raise BadSubmission("no patch: neither 'result' nor 'container_id' was given")
        try:
            await self.sandboxes.exec(req.container_id, "true", timeout=30)
        except SandboxNotFound as exc:
            raise BadSubmission(f"sandbox {req.container_id!r} not found: {exc}") from exc

    async def evaluate(self, req: EvalRequest) -> EvalResult:
        """Evaluate one submission. Raises :class:`TaskNotFound` (unknown dataset or task)
        and :class:`BadSubmission` (no patch to evaluate); every other failure comes back
        as a result with reward 0 and an ``info["status"]``."""
        t0 = time.monotonic()
        info: dict[str, Any] = {
            "instance_id": req.instance_id,
            "dataset": req.dataset_name,
            "exit_status": req.exit_status,
        }
        if req.exit_status != SUBMITTED:
            info.update(status="not_submitted", durations={"total": 0.0})
            log.info("eval %s: not submitted (%s)", req.instance_id, req.exit_status)
            await self._not_submitted_verdict(req, info)
            return EvalResult(reward=0.0, speedup=0.0, info=info)

        task = await asyncio.to_thread(
            _resolve_task, req.dataset_name, req.instance_id, req.split, self.dataset_roots
        )
        durations: dict[str, float] = {}
        info["durations"] = durations
        patch, source = await self._get_patch(req, durations)
        info["patch_source"] = source
        info["patch_lines"] = count_patch_lines(patch)
        log.info(
            "eval %s: start (%s patch, %d lines)", req.instance_id, source, info["patch_lines"]
        )

        pool = _Pool(self.sandboxes)
        try:
            reward, speedup = await self._run(task, req.dataset_name, patch, pool, info, durations)
        except _Outcome as out:
            info.update(out.info)
            info["status"] = out.status
            reward, speedup = 0.0, 0.0
            if image_eval.scored_by_benchmark(task):
                info["benchmark"] = image_eval.failed(task, out.status)
        except (TaskNotFound, BadSubmission):
            raise
        except Exception as exc:  # sandbox trouble, bugs: reported, not raised
            log.exception("eval %s: error", req.instance_id)
            info["status"] = "error"
            info["error"] = f"{type(exc).__name__}: {exc}"
            if is_transport_error(exc) or isinstance(exc, SandboxNotFound):
                # unreachable sandbox server, or one that lost our sandbox: not judged
                info["transient"] = True
            reward, speedup = 0.0, 0.0
            if image_eval.scored_by_benchmark(task):
                info["benchmark"] = image_eval.failed(task, "error")
        finally:
            await self._close(pool)
            durations["total"] = round(time.monotonic() - t0, 4)
        log.info(
            "eval %s: %s reward=%.3f speedup=%.3f in %.1f s",
            req.instance_id,
            info.get("status"),
            reward,
            speedup,
            durations["total"],
        )
        return EvalResult(reward=reward, speedup=speedup, info=info)

    async def _not_submitted_verdict(self, req: EvalRequest, info: dict[str, Any]) -> None:
        """A real benchmark's task not submitted fails its rule (counted in its summary)."""
        try:
            task = await asyncio.to_thread(
                _resolve_task, req.dataset_name, req.instance_id, req.split, self.dataset_roots
            )
        except (TaskNotFound, OSError, ValueError):
            return
        if image_eval.scored_by_benchmark(task):
            info["benchmark"] = image_eval.failed(task, "not_submitted")

    async def _close(self, pool: _Pool) -> None:
        # Shielded: a cancelled evaluation still deletes its sandboxes (in the background
        # if the cancellation comes again while we wait).
        cleanup = asyncio.ensure_future(pool.close())
        self._cleanups.add(cleanup)
        cleanup.add_done_callback(self._cleanups.discard)
        await asyncio.shield(cleanup)

    # ------------------------------------------------------------ the patch

    async def _get_patch(self, req: EvalRequest, durations: dict[str, float]) -> tuple[str, str]:
        if req.result is not None:
            return req.result, "result"
        if not req.container_id:
            raise BadSubmission("no patch: neither 'result' nor 'container_id' was given")
        t = time.monotonic()
        try:
            patch = await self.diff_sandbox(req.container_id)
        except SandboxNotFound as exc:
            raise BadSubmission(f"sandbox {req.container_id!r} not found: {exc}") from exc
        durations["diff"] = round(time.monotonic() - t, 4)
        return patch, "container"

    async def diff_sandbox(self, sandbox_id: str) -> str:
        return await sandbox_diff(self.sandboxes, sandbox_id)

    async def _apply(self, sandbox_id: str, patch: str) -> tuple[bool, str, str]:
        return await apply_patch(self.sandboxes, sandbox_id, patch)

    # ------------------------------------------------------------ the steps

    async def _run(
        self,
        task: Task,
        dataset: str,
        patch: str,
        pool: _Pool,
        info: dict[str, Any],
        durations: dict[str, float],
    ) -> tuple[float, float]:
        cfg = self.config
        # the dataset as the request named it (a bundled name or a folder), as the sandboxes do
        create = CreateSandbox(
            task_id=task.id,
            dataset=dataset,
            run=job_label.get(),
            memory_mb=cfg.memory_mb.get(task.benchmark),
        )
        scored = image_eval.scored_by_benchmark(task)  # a real benchmark: the gold is timed
        want_ref = cfg.reference or cfg.reward.kind == "relative" or scored
        reference_patch = await asyncio.to_thread(_read_solution, task) if want_ref else ""

        t = time.monotonic()
        candidate_t = pool.start(create)
        baseline_t = pool.start(create)  # created while the candidate is tested
        reference_t = pool.start(create) if reference_patch.strip() else None
        candidate = await candidate_t
        durations["create"] = round(time.monotonic() - t, 4)

        # 1. apply (a real benchmark's protected tests: never edited), rebuild
        t = time.monotonic()
        if scored and (edits := image_eval.protected_edits(patch, task.test_files)):
            raise _Outcome("tests_modified", modified_tests=edits)
        candidate_tree = None
        if patch.strip():
            ok, method, output = await self._apply(candidate, patch)
            if not ok:
                raise _Outcome("patch_failed", apply_output=output_tail(output))
            info["apply_method"] = method
            if reference_t is not None:  # a candidate that is the gold is timed once
                candidate_tree = await tree_id(self.sandboxes, candidate)
        else:
            info["apply_method"] = "none (empty patch)"
        durations["apply"] = round(time.monotonic() - t, 4)
        build_timeout = cfg.test_timeout or task.timeout_s
        if patch.strip():
            t = time.monotonic()
            res = await image_eval.rebuild(self.sandboxes, candidate, task, build_timeout)
            if res is not None:
                durations["rebuild"] = round(time.monotonic() - t, 4)
                _check_step(res, "build_failed", "build")

        # 2. restore the task's test files, run the tests
        t = time.monotonic()
        if not scored:
            await restore_test_files(self.sandboxes, candidate, task)
        timeout = cfg.test_timeout or task.timeout_s
        res = await self.sandboxes.exec(candidate, task.test_cmd, timeout=timeout)
        durations["tests"] = round(time.monotonic() - t, 4)
        _check_step(res, "tests_failed", "test")

        # 3. same stdout as the original
        baseline = await baseline_t
        arms = {"baseline": baseline, "candidate": candidate}
        ref = Reference()
        if reference_t is not None:
            ref = await prepare_reference(
                self.sandboxes,
                reference_t,
                reference_patch,
                task,
                build_timeout,
                candidate_tree,
                info,
            )
            if ref.sandbox is not None:
                arms["reference"] = ref.sandbox
        run_timeout = cfg.workload_timeout or task.timeout_s
        t = time.monotonic()
        checks = dict(
            zip(
                arms,
                await asyncio.gather(
                    *(
                        run_checked(
                            self.sandboxes,
                            sid,
                            task.workload_cmd,
                            run_timeout=run_timeout,
                            python=cfg.python,
                            skip=image_eval.output_filter(task),
                        )
                        for sid in arms.values()
                    )
                ),
                strict=True,
            )
        )
        self._check_outputs(checks, arms, info)
        await self._gso_eqcheck(arms, task, run_timeout, info)
        durations["check"] = round(time.monotonic() - t, 4)

        # 4. timing
        t = time.monotonic()
        protocol = cfg.protocol(task)  # the operator's rounds, else the task's benchmark's
        try:
            if self._timing_slots is not None:
                async with self._timing_slots:
                    samples = await self._measure(arms, task, run_timeout, protocol, ref)
            else:
                samples = await self._measure(arms, task, run_timeout, protocol, ref)
        except TimingError as exc:
            if exc.arm == "candidate":
                raise _Outcome("workload_failed", workload_error=exc.detail) from None
            raise
        durations["timing"] = round(time.monotonic() - t, 4)
        if ref.is_candidate:
            candidate_as_reference(samples)
        if "reference" in samples.dropped:
            info["reference_error"] = "reference timing failed: " + samples.dropped["reference"]

        # bootstraps (a few ms each at 20 rounds): off the event loop
        timing = await asyncio.to_thread(timing_stats, samples, cfg, protocol)
        speedup, stats = timing.speedup, timing.stats
        info["clocks_disagree"] = timing.clocks_disagree
        reference_speedup = timing.reference_speedup
        if reference_speedup is not None:
            info["reference_speedup"] = reference_speedup
        info["timing"] = stats
        info["within_noise"] = stats["within_noise"]
        info["suspicious"] = stats["suspicious"]
        info["speedup_ci95"] = stats["ci95"]
        if scored:
            speedup = image_eval.apply_verdict(task, samples, stats, info, speedup, cfg)
        reward = compute_reward(
            speedup,
            correct=True,
            within_noise=stats["within_noise"],
            config=cfg.reward,
            reference_speedup=reference_speedup,
        )
        info["reward_kind"] = cfg.reward.kind
        info["status"] = "ok"
        return reward, speedup

    def _check_outputs(
        self, checks: dict[str, CheckedRun], arms: dict[str, str], info: dict[str, Any]
    ) -> None:
        base = checks["baseline"]
        if base.returncode != 0:
            raise SandboxError(
                f"the unmodified workload failed (exit {base.returncode}): "
                f"{output_tail(base.stderr_tail, 1000)}"
            )
        cand = checks["candidate"]
        if cand.returncode != 0:
            raise _Outcome(
                "workload_failed",
                workload_returncode=cand.returncode,
                workload_stderr=cand.stderr_tail,
                workload_stdout_head=cand.head,
            )
        if cand.sha256 != base.sha256:
            raise _Outcome(
                "wrong_output",
                expected_output_head=base.head,
                candidate_output_head=cand.head,
                expected_output_bytes=base.bytes,
                candidate_output_bytes=cand.bytes,
            )
        ref = checks.get("reference")
        if ref is not None:
            info["reference_output_ok"] = ref.returncode == 0 and ref.sha256 == base.sha256
            if not info["reference_output_ok"]:
                arms.pop("reference", None)

    async def _gso_eqcheck(
        self, arms: dict[str, str], task: Task, timeout: float, info: dict[str, Any]
    ) -> None:
        """GSO's ``--reference`` / ``--eqcheck`` runs: a candidate whose results differ
        from the base's is ``wrong_output``; a gold whose results differ is dropped."""
        failures = await image_eval.gso_eqcheck(self.sandboxes, arms, task, timeout)
        if "candidate" in failures:
            raise _Outcome("wrong_output", eqcheck_output=failures["candidate"])
        if "reference" in failures:
            arms.pop("reference", None)
            info["reference_error"] = failures["reference"]

    async def _measure(
        self,
        arms: dict[str, str],
        task: Task,
        run_timeout: float,
        protocol: TimingProtocol,
        ref: Reference,
    ) -> Samples:
        cfg = self.config
        # every round for a benchmark's figures and for a timed reference
        full = "reference" in arms or ref.is_candidate or image_eval.scored_by_benchmark(task)
        return await measure(
            self.sandboxes,
            arms,
            task.workload_cmd,
            repeats=protocol.repeats,
            warmup=max(protocol.warmup - 1, 0),  # the output check was the first warm-up
            run_timeout=run_timeout,
            order=cfg.order,
            seed=cfg.seed,
            python=cfg.python,
            optional=("reference",),
            more=more_rounds(cfg),
            max_repeats=cfg.max_repeats,
            parse=image_eval.metric_parser(task),
            decided=None if full else decided_early(cfg),
            decide_after=cfg.early_stop_rounds or 0,
        )
