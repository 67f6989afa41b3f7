"""The evaluation core: correctness rules, timing, reward, summaries.

The end-to-end tests run real commands (git, python) in real sandboxes:
``SandboxService`` over a ``ProcessBackend`` in a temporary folder. ``LocalDirSandboxes``,
a minimal independent implementation of the ``Sandboxes`` protocol (a copy of the task's
repository committed once as "base", commands run with the shell in it), checks that the
evaluator needs nothing beyond the protocol. ``Counting`` wraps either and counts the
sandboxes created and still alive.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import shutil
import signal
import subprocess
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import drifting_noop_samples
from hypothesis import given, strategies as st

from agentfleet.evaluation.evaluator import (
    BadSubmission,
    EvalConfig,
    Evaluator,
    count_patch_lines,
)
from agentfleet.evaluation.reward import (
    RewardConfig,
    compute_reward,
    speedup_reward,
    summarize,
)
from agentfleet.evaluation.schema import EvalRequest, EvalResult
from agentfleet.evaluation.server import create_app
from agentfleet.evaluation.speedup import (
    bootstrap_ratio_ci,
    iqr,
    median,
    paired_speedup,
    paired_t_ratio_ci,
    parse_timer_output,
    quantile,
    ratio_of_medians,
    speedup_stats,
    timer_command,
)
from agentfleet.http import HttpPool
from agentfleet.sandbox import (
    CreateSandbox,
    ExecResult,
    ProcessBackend,
    SandboxError,
    Sandboxes,
    SandboxInfo,
    SandboxNotFound,
    SandboxService,
)
from agentfleet.serving import serve_in_loop
from agentfleet.tasks.task import TaskNotFound, load_dataset

# ---------------------------------------------------------------- a local Sandboxes

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


def _git_init(path: Path) -> None:
    env = {**os.environ, **GIT_ENV}
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "--no-gpg-sign", "-m", "base"],
    ):
        subprocess.run(cmd, cwd=path, check=True, env=env, capture_output=True)


class LocalDirSandboxes:
    """The ``Sandboxes`` protocol over plain folders: each sandbox is a copy of the task's
    repository, git-initialised with one commit; commands run with the shell in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dirs: dict[str, Path] = {}
        self.created = 0
        self._ids = itertools.count(1)

    @property
    def live(self) -> int:
        return len(self.dirs)

    def _dir(self, sandbox_id: str) -> Path:
        try:
            return self.dirs[sandbox_id]
        except KeyError:
            raise SandboxNotFound(f"no sandbox {sandbox_id}") from None

    async def create(self, req: CreateSandbox) -> SandboxInfo:
        sid = f"sb{next(self._ids)}"
        workdir = self.root / sid

        def make() -> None:
            if req.task_id:
                task = load_dataset(req.dataset).task(req.task_id)
                shutil.copytree(task.repo_dir, workdir)
            else:
                workdir.mkdir(parents=True)
            _git_init(workdir)

        await asyncio.to_thread(make)
        self.dirs[sid] = workdir
        self.created += 1
        return SandboxInfo(
            sandbox_id=sid,
            backend="localdir",
            workdir=str(workdir),
            task_id=req.task_id,
            dataset=req.dataset,
            created_at=0.0,
            expires_at=0.0,
        )

    async def exec(
        self,
        sandbox_id: str,
        command: str,
        *,
        cwd: str = "",
        timeout: float | None = None,
        env: dict[str, str] | None = None,
    ) -> ExecResult:
        workdir = self._dir(sandbox_id)
        loop = asyncio.get_running_loop()
        t = loop.time()
        proc = await asyncio.create_subprocess_shell(
            command,
            cwd=workdir / cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **GIT_ENV, **(env or {})},
            start_new_session=True,
        )
        timed_out = False
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = await proc.communicate()
        except asyncio.CancelledError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise
        return ExecResult(
            output=out.decode("utf-8", "replace"),
            returncode=proc.returncode if proc.returncode is not None else -1,
            timed_out=timed_out,
            duration_s=loop.time() - t,
        )

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        return await asyncio.to_thread((self._dir(sandbox_id) / path).read_bytes)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        target = self._dir(sandbox_id) / path
        await asyncio.to_thread(target.write_bytes, data)

    async def delete(self, sandbox_id: str) -> None:
        workdir = self.dirs.pop(sandbox_id, None)
        if workdir is None:
            raise SandboxNotFound(f"no sandbox {sandbox_id}")
        await asyncio.to_thread(shutil.rmtree, workdir, True)


class Counting:
    """Wraps a ``Sandboxes`` and counts what was created and is still alive."""

    def __init__(self, inner: Sandboxes) -> None:
        self.inner = inner
        self.alive: set[str] = set()
        self.created = 0

    @property
    def live(self) -> int:
        return len(self.alive)

    async def create(self, req: CreateSandbox) -> SandboxInfo:
        info = await self.inner.create(req)
        self.created += 1
        self.alive.add(info.sandbox_id)
        return info

    async def exec(
        self,
        sandbox_id: str,
        command: str,
        *,
        cwd: str = "",
        timeout: float | None = None,
        env: dict[str, str] | None = None,
    ) -> ExecResult:
        return await self.inner.exec(sandbox_id, command, cwd=cwd, timeout=timeout, env=env)

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        return await self.inner.read_file(sandbox_id, path)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        await self.inner.write_file(sandbox_id, path, data)

    async def delete(self, sandbox_id: str) -> None:
        await self.inner.delete(sandbox_id)
        self.alive.discard(sandbox_id)


def test_test_sandboxes_follow_the_protocol(tmp_path: Path) -> None:
    assert isinstance(LocalDirSandboxes(tmp_path), Sandboxes)
    assert isinstance(Counting(LocalDirSandboxes(tmp_path)), Sandboxes)


# ---------------------------------------------------------------- a tiny dataset

SLOW_PY = textwrap.dedent(
    """\
    import time


    def total(n):
        t0 = time.process_time()
        while time.process_time() - t0 < 0.25:  # the deliberately slow part: 0.25 s of CPU
            pass
        s = 0
        for i in range(n):
            s += i * i
        return s
    """
)
FAST_PY = textwrap.dedent(
    """\
    def total(n):
        return (n - 1) * n * (2 * n - 1) // 6
    """
)
BROKEN_PY = "def total(n):\n    return 0\n"
WRONG_BIG_PY = textwrap.dedent(
    """\
    def total(n):
        m = min(n, 1000)  # right for small n only
        return (m - 1) * m * (2 * m - 1) // 6
    """
)
CRASH_PY = textwrap.dedent(
    """\
    def total(n):
        if n > 1000:
            raise SystemExit(3)
        return (n - 1) * n * (2 * n - 1) // 6
    """
)
TEST_PY = textwrap.dedent(
    """\
    import unittest

    from slow import total


    class TotalTest(unittest.TestCase):
        def test_small(self):
            self.assertEqual(total(10), 285)
            self.assertEqual(total(0), 0)


    if __name__ == "__main__":
        unittest.main()
    """
)
CHEAT_TEST_PY = textwrap.dedent(
    """\
    import unittest


    class TotalTest(unittest.TestCase):
        def test_small(self):
            pass
    """
)
WORKLOAD_PY = 'from slow import total\n\nprint("total", total(20000))\n'
BAD_PATCH = textwrap.dedent(
    """\
    diff --git a/slow.py b/slow.py
    --- a/slow.py
    +++ b/slow.py
    @@ -1,3 +1,3 @@
    -this line is not in the file
    -nor is this one
    -nor this
    +x = 1
    +y = 2
    +z = 3
    """
)

TASK_ID = "sumsq"


def _make_patch(repo: Path, work: Path, changes: dict[str, str | None]) -> str:
    shutil.copytree(repo, work)
    _git_init(work)
    for rel, content in changes.items():
        path = work / rel
        if content is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    env = {**os.environ, **GIT_ENV}
    subprocess.run(["git", "add", "-A"], cwd=work, check=True, env=env)
    out = subprocess.run(
        ["git", "diff", "--cached", "--binary"],
        cwd=work,
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    return out.stdout


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Builds the dataset; returns its path under "path" and the patches by name."""
    root = tmp_path_factory.mktemp("dataset")
    (root / "dataset.yaml").write_text(
        f"name: mini\ndescription: test dataset\nsplits:\n  test: [{TASK_ID}]\n  train: []\n"
    )
    task_dir = root / TASK_ID
    repo = task_dir / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "slow.py").write_text(SLOW_PY)
    (repo / "workload.py").write_text(WORKLOAD_PY)
    (repo / "tests" / "__init__.py").write_text("")
    (repo / "tests" / "test_slow.py").write_text(TEST_PY)
    (task_dir / "task.yaml").write_text(
        textwrap.dedent(
            """\
            title: sum of squares
            prompt: make total() fast
            test_cmd: python3 -m unittest discover -s tests -t . -q
            workload_cmd: python3 workload.py
            test_files: [tests]
            timeout_s: 60
            """
        )
    )
    work = tmp_path_factory.mktemp("patches")
    patches = {
        "fast": _make_patch(repo, work / "fast", {"slow.py": FAST_PY}),
        "fast_too": _make_patch(repo, work / "fast_too", {"slow.py": FAST_PY + "# also fast\n"}),
        "broken": _make_patch(repo, work / "broken", {"slow.py": BROKEN_PY}),
        "wrong": _make_patch(repo, work / "wrong", {"slow.py": WRONG_BIG_PY}),
        "crash": _make_patch(repo, work / "crash", {"slow.py": CRASH_PY}),
        "cheat": _make_patch(
            repo,
            work / "cheat",
            {
                "slow.py": BROKEN_PY,
                "tests/test_slow.py": CHEAT_TEST_PY,
                "tests/test_extra.py": "import unittest\n",
            },
        ),
        "cheat_delete": _make_patch(
            repo, work / "cheat_delete", {"slow.py": BROKEN_PY, "tests/test_slow.py": None}
        ),
        "empty": "",
        "bad": BAD_PATCH,
    }
    (task_dir / "solution.patch").write_text(patches["fast"])
    return {"path": str(root), **patches}


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[SandboxService]:
    roots = [tmp_path.parent]  # the module's dataset and the tests' own (tmp_path's siblings)
    async with SandboxService(
        ProcessBackend(root=tmp_path / "sandboxes"), dataset_roots=roots
    ) as svc:
        yield svc
        assert len(svc) == 0, "a sandbox was left behind"


@pytest.fixture
def sandboxes(service: SandboxService) -> Counting:
    return Counting(service)


FAST_CONFIG = EvalConfig(repeats=3, bootstrap_resamples=300)


def _req(dataset: dict[str, str], **kw: object) -> EvalRequest:
    fields: dict[str, object] = {
        "exit_status": "Submitted",
        "instance_id": TASK_ID,
        "dataset_name": dataset["path"],
    }
    fields.update(kw)
    return EvalRequest.model_validate(fields)


async def _evaluate(
    sandboxes: Counting,
    req: EvalRequest,
    config: EvalConfig = FAST_CONFIG,
) -> EvalResult:
    result = await Evaluator(sandboxes, config, dataset_roots=[req.dataset_name]).evaluate(req)
    assert sandboxes.live == 0, "every sandbox the evaluator created is deleted"
    return result


# ---------------------------------------------------------------- end to end


async def test_fast_correct_patch_is_rewarded(dataset: dict[str, str], sandboxes: Counting) -> None:
    res = await _evaluate(sandboxes, _req(dataset, result=dataset["fast"]))
    info = res.info
    assert info["status"] == "ok", info
    assert res.speedup > 1.5
    assert res.reward > 0
    assert 0 < res.reward <= 1
    assert info["within_noise"] is False
    assert info["patch_lines"] == count_patch_lines(dataset["fast"]) > 0
    assert info["apply_method"] == "git apply"
    t = info["timing"]
    assert len(t["baseline_s"]) == len(t["candidate_s"]) == 3
    assert t["baseline_median_s"] > 0.2
    lo, hi = info["speedup_ci95"]
    assert lo <= res.speedup <= hi
    ab, ba = ["baseline", "candidate"], ["candidate", "baseline"]
    assert t["order"] == [ab, ba, ab]
    for key in ("create", "apply", "tests", "check", "timing", "total"):
        assert info["durations"][key] >= 0
    assert sandboxes.created == 2


async def test_rounds_stop_once_the_reward_is_decided(
    dataset: dict[str, str], sandboxes: Counting
) -> None:
    fast = _req(dataset, result=dataset["fast"])  # far past 2x: the full reward
    cfg = FAST_CONFIG.model_copy(update={"repeats": 4})
    res = await _evaluate(sandboxes, fast, cfg)
    t = res.info["timing"]
    assert res.info["status"] == "ok" and res.reward == 1.0, res.info
    assert (t["repeats"], t["rounds"], t["stopped_early"]) == (4, 3, True)
    # off: every round, the same reward
    off = await _evaluate(sandboxes, fast, cfg.model_copy(update={"early_stop_rounds": None}))
    assert off.reward == 1.0
    assert (off.info["timing"]["rounds"], off.info["timing"]["stopped_early"]) == (4, False)
    # a no-op's reward is the noise gate's call: every round runs
    t = (await _evaluate(sandboxes, _req(dataset, result=""), cfg)).info["timing"]
    assert (t["rounds"], t["stopped_early"]) == (4, False)
    # a timed reference keeps every round (its figure needs them); so does target_ci
    for update in ({"reference": True}, {"target_ci": 0.99}):
        t = (await _evaluate(sandboxes, fast, cfg.model_copy(update=update))).info["timing"]
        assert (t["rounds"], t["stopped_early"]) == (4, False), update


async def test_evaluator_needs_only_the_protocol(dataset: dict[str, str], tmp_path: Path) -> None:
    sbx = Counting(LocalDirSandboxes(tmp_path / "local"))
    res = await _evaluate(sbx, _req(dataset, result=dataset["fast"]))
    assert res.info["status"] == "ok", res.info
    assert res.speedup > 1.5 and res.reward > 0


async def test_empty_patch_measures_about_no_change(
    dataset: dict[str, str], sandboxes: Counting
) -> None:
    # A generous noise threshold: this machine may be busy, and the claim is "no credit".
    config = FAST_CONFIG.model_copy(update={"noise_threshold": 0.3})
    res = await _evaluate(sandboxes, _req(dataset, result=""), config)
    assert res.info["status"] == "ok", res.info
    assert 0.7 <= res.speedup <= 1.4
    assert res.reward == 0.0
    assert res.info["within_noise"] is True
    assert res.info["patch_lines"] == 0


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("broken", "tests_failed"),
        ("cheat", "tests_failed"),
        ("cheat_delete", "tests_failed"),
        ("wrong", "wrong_output"),
        ("crash", "workload_failed"),
        ("bad", "patch_failed"),
    ],
)
async def test_incorrect_patches_get_nothing(
    dataset: dict[str, str], sandboxes: Counting, name: str, status: str
) -> None:
    res = await _evaluate(sandboxes, _req(dataset, result=dataset[name]))
    assert res.info["status"] == status, res.info
    assert res.reward == 0.0
    assert res.speedup == 0.0
    assert "timing" not in res.info
    if status == "tests_failed":
        assert "FAIL" in res.info["test_output"] or "Error" in res.info["test_output"]
    if status == "wrong_output":
        assert res.info["expected_output_head"] != res.info["candidate_output_head"]
        assert res.info["expected_output_head"].startswith("total ")
    if status == "patch_failed":
        assert res.info["apply_output"]


async def test_not_submitted_creates_no_sandbox(
    dataset: dict[str, str], sandboxes: Counting
) -> None:
    res = await _evaluate(
        sandboxes, _req(dataset, exit_status="TimeLimitExceeded", result=dataset["fast"])
    )
    assert (res.reward, res.speedup) == (0.0, 0.0)
    assert res.info["status"] == "not_submitted"
    assert res.info["exit_status"] == "TimeLimitExceeded"
    assert sandboxes.created == 0


async def test_patch_from_an_agents_sandbox(dataset: dict[str, str], sandboxes: Counting) -> None:
    agent = (
        await sandboxes.create(CreateSandbox(task_id=TASK_ID, dataset=dataset["path"]))
    ).sandbox_id
    await sandboxes.write_file(agent, "slow.py", FAST_PY.encode())
    await sandboxes.write_file(agent, "NOTES.md", b"a new file is part of the diff\n")
    # the agent committed part of its work: still measured against the first commit
    done = await sandboxes.exec(agent, "git add NOTES.md && git commit -q -m notes", env=GIT_ENV)
    assert done.returncode == 0, done.output
    await sandboxes.exec(agent, "python3 -B -c 'import slow'")
    await sandboxes.write_file(agent, "__pycache__/slow.cpython-311.pyc", b"junk")

    result = await Evaluator(sandboxes, FAST_CONFIG, dataset_roots=[dataset["path"]]).evaluate(
        _req(dataset, result=None, container_id=agent)
    )
    assert result.info["status"] == "ok", result.info
    assert result.info["patch_source"] == "container"
    assert result.speedup > 1.5 and result.reward > 0
    assert sandboxes.live == 1  # the agent's sandbox is not the evaluator's to delete
    status = await sandboxes.exec(agent, "git status --porcelain")
    assert "A " not in status.output  # index restored
    patch = await Evaluator(sandboxes, dataset_roots=[dataset["path"]]).diff_sandbox(agent)
    assert "NOTES.md" in patch and "slow.py" in patch and "__pycache__" not in patch
    await sandboxes.delete(agent)


async def test_bad_requests_raise(dataset: dict[str, str], sandboxes: Counting) -> None:
    ev = Evaluator(sandboxes, FAST_CONFIG, dataset_roots=[dataset["path"]])
    for step in (ev.check, ev.evaluate):  # check: the same verdict, at submit time
        with pytest.raises(BadSubmission):
            await step(_req(dataset))
        with pytest.raises(BadSubmission):
            await step(_req(dataset, container_id="no-such-sandbox"))
        with pytest.raises(TaskNotFound):
            await step(_req(dataset, instance_id="nope", result=""))
    await ev.check(_req(dataset, result=""))
    await ev.check(_req(dataset, result=dataset["fast"]))
    with pytest.raises(BadSubmission, match="does not apply"):
        await ev.check(_req(dataset, result=dataset["bad"]))
    await ev.check(_req(dataset, exit_status="Error", instance_id="nope"))
    with pytest.raises(TaskNotFound):
        await ev.evaluate(_req(dataset, dataset_name=str(dataset["path"]) + "-missing", result=""))
    assert sandboxes.created == 0


async def test_task_outside_the_requested_split_is_refused(
    dataset: dict[str, str], sandboxes: Counting
) -> None:
    ev = Evaluator(sandboxes, FAST_CONFIG, dataset_roots=[dataset["path"]])
    for step in (ev.check, ev.evaluate):
        with pytest.raises(TaskNotFound, match=r"not in split 'train'.*in: test"):
            await step(_req(dataset, result="", split="train"))
        with pytest.raises(TaskNotFound, match="no split 'nope'"):
            await step(_req(dataset, result="", split="nope"))
    await ev.check(_req(dataset, result="", split="test"))
    # At submit over HTTP: 404, as for an unknown instance, and no job.
    async with serve_in_loop(create_app(ev)) as srv, HttpPool() as pool:
        body = _req(dataset, result="", split="train").model_dump(mode="json")
        resp = await pool.request("POST", f"{srv.url}/evaluations", json=body)
        assert resp.status == 404, resp.text()
        assert "not in split 'train'" in resp.json()["error"]
    assert sandboxes.created == 0


@pytest.fixture
def git_only_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH holds git and nothing else: no ``patch`` program."""
    git = shutil.which("git")
    assert git is not None
    bindir = tmp_path / "git-only-bin"
    bindir.mkdir()
    (bindir / "git").symlink_to(git)
    monkeypatch.setenv("PATH", str(bindir))


async def test_check_without_the_patch_program_means_does_not_apply(
    dataset: dict[str, str], sandboxes: Counting, git_only_path: None
) -> None:
    ev = Evaluator(sandboxes, FAST_CONFIG, dataset_roots=[dataset["path"]])
    with pytest.raises(BadSubmission, match="does not apply"):
        await ev.check(_req(dataset, result=dataset["bad"]))
    await ev.check(_req(dataset, result=dataset["fast"]))  # git alone takes a good patch
    async with serve_in_loop(create_app(ev)) as srv, HttpPool() as pool:
        body = _req(dataset, result=dataset["bad"]).model_dump(mode="json")
        resp = await pool.request("POST", f"{srv.url}/evaluations", json=body)
        assert resp.status == 422, resp.text()
        assert "does not apply" in resp.json()["error"]


async def test_reference_speedup_and_relative_reward(
    dataset: dict[str, str], sandboxes: Counting
) -> None:
    """A candidate other than the gold (here, the gold plus a comment): the gold is timed
    in its own sandbox, interleaved with the base and the candidate."""
    config = FAST_CONFIG.model_copy(update={"reward": RewardConfig(kind="relative")})
    res = await _evaluate(sandboxes, _req(dataset, result=dataset["fast_too"]), config)
    assert res.info["status"] == "ok", res.info
    assert res.info["reference_output_ok"] is True
    assert "reference_is_candidate" not in res.info
    assert res.info["reference_speedup"] > 1.5
    assert len(res.info["timing"]["reference_s"]) == 3
    assert all(r.count("reference") == 1 for r in res.info["timing"]["order"])
    assert res.info["reward_kind"] == "relative"
    assert 0 < res.reward <= 1
    assert sandboxes.created == 3


async def test_a_candidate_that_is_the_gold_is_timed_once(
    dataset: dict[str, str], sandboxes: Counting
) -> None:
    """The gold patch resubmitted: the same files, so the same program; its rounds stand for
    the gold's (no separate timing whose noise could put it below the gold), and the
    relative reward is exactly the reward of matching the gold."""
    config = FAST_CONFIG.model_copy(update={"reward": RewardConfig(kind="relative")})
    res = await _evaluate(sandboxes, _req(dataset, result=dataset["fast"]), config)
    info = res.info
    assert info["status"] == "ok", info
    assert info["reference_is_candidate"] is True and "reference_error" not in info
    assert info["timing"]["reference_s"] == info["timing"]["candidate_s"]
    assert len(info["timing"]["reference_s"]) == 3
    assert all("reference" not in r for r in info["timing"]["order"])  # not timed apart
    assert info["reference_speedup"] > 1.5
    assert res.reward == pytest.approx(1.0)
    assert sandboxes.created == 3 and sandboxes.live == 0


class ReferenceTimingFails(Counting):
    """Timed runs fail in the sandbox holding the fast ``slow.py``: the reference, when the
    candidate is the empty patch."""

    async def exec(
        self,
        sandbox_id: str,
        command: str,
        *,
        cwd: str = "",
        timeout: float | None = None,
        env: dict[str, str] | None = None,
    ) -> ExecResult:
        if "AGENTFLEET_TIME" in command:
            code = await self.inner.read_file(sandbox_id, "slow.py")
            if code.decode() == FAST_PY:
                return ExecResult(output="reference blew up", returncode=1)
        return await super().exec(sandbox_id, command, cwd=cwd, timeout=timeout, env=env)


async def test_reference_timing_failure_drops_only_the_reference(
    dataset: dict[str, str], tmp_path: Path
) -> None:
    sbx = ReferenceTimingFails(LocalDirSandboxes(tmp_path / "sb"))
    config = FAST_CONFIG.model_copy(
        update={"reference": True, "reward": RewardConfig(kind="relative")}
    )
    res = await Evaluator(sbx, config, dataset_roots=[dataset["path"]]).evaluate(
        _req(dataset, result="")
    )
    info = res.info
    assert info["status"] == "ok", info
    assert info["reference_error"].startswith("reference timing failed:"), info
    assert "reference blew up" in info["reference_error"]
    assert "reference_speedup" not in info and "reference_s" not in info["timing"]
    assert len(info["timing"]["baseline_s"]) == len(info["timing"]["candidate_s"]) == 3
    assert all("reference" not in r for r in info["timing"]["order"])
    assert 0.5 < res.speedup < 2.0  # measured all the same (relative falls back to log)
    assert sbx.created == 3 and sbx.live == 0


class FailingSandboxes(Counting):
    """Exec fails once the workload is being timed."""

    async def exec(
        self,
        sandbox_id: str,
        command: str,
        *,
        cwd: str = "",
        timeout: float | None = None,
        env: dict[str, str] | None = None,
    ) -> ExecResult:
        if "AGENTFLEET_TIME" in command:
            raise SandboxError("backend went away")
        return await super().exec(sandbox_id, command, cwd=cwd, timeout=timeout, env=env)


async def test_sandbox_errors_are_reported_not_raised(
    dataset: dict[str, str], tmp_path: Path
) -> None:
    sbx = FailingSandboxes(LocalDirSandboxes(tmp_path / "sb"))
    res = await Evaluator(sbx, FAST_CONFIG, dataset_roots=[dataset["path"]]).evaluate(
        _req(dataset, result=dataset["fast"])
    )
    assert res.info["status"] == "error"
    assert "backend went away" in res.info["error"]
    assert res.reward == 0.0
    assert sbx.live == 0


async def test_cancelled_evaluation_deletes_its_sandboxes(
    dataset: dict[str, str], sandboxes: Counting
) -> None:
    task = asyncio.create_task(
        Evaluator(sandboxes, FAST_CONFIG, dataset_roots=[dataset["path"]]).evaluate(
            _req(dataset, result=dataset["fast"])
        )
    )
    for _ in range(200):
        await asyncio.sleep(0.02)
        if sandboxes.created >= 2:
            break
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if sandboxes.live == 0:
            break
        await asyncio.sleep(0.02)
    assert sandboxes.created >= 1
    assert sandboxes.live == 0


# ---------------------------------------------------------------- statistics


def test_median_quantile_iqr() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.25) == 2.0
    assert iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == 2.0
    assert iqr([7.0]) == 0.0
    with pytest.raises(ValueError):
        median([])


def test_bootstrap_interval() -> None:
    base = [1.00, 1.02, 0.98, 1.01, 0.99]
    cand = [0.50, 0.51, 0.49, 0.50, 0.52]
    lo, hi = bootstrap_ratio_ci(base, cand, resamples=500, seed=1)
    assert lo <= 2.0 <= hi and 1.8 < lo and hi < 2.2
    assert bootstrap_ratio_ci(base, cand, resamples=500, seed=1) == (lo, hi)  # seeded
    same = bootstrap_ratio_ci(base, base, resamples=500)
    assert same[0] <= 1.0 <= same[1]


def test_the_speedup_pairs_the_rounds() -> None:
    """Unchanged code on a host whose speed drifts between rounds: the ratio of medians
    reads a gain, the median of the rounds' ratios does not (:func:`drifting_noop_samples`)."""
    base, cand = drifting_noop_samples()
    assert ratio_of_medians(base, cand) == pytest.approx(1.0816, abs=1e-3)
    assert paired_speedup(base, cand) == pytest.approx(1.01, abs=1e-9)
    stats = speedup_stats(base, cand)
    assert abs(stats["speedup"] - 1.0) < 0.05 and stats["within_noise"]
    assert paired_speedup([2.0, 4.0], [1.0, 1.0]) == 3.0  # an even count: the middle two
    assert paired_speedup([1.0, 2.0, 3.0], [1.0]) == ratio_of_medians([1.0, 2.0, 3.0], [1.0])


def test_speedup_stats_flags() -> None:
    s = speedup_stats([1.0, 1.0, 1.0], [0.5, 0.5, 0.5])
    assert s["speedup"] == 2.0 and not s["within_noise"] and not s["suspicious"]
    assert speedup_stats([1.0, 1.1, 0.9], [1.0, 0.9, 1.1])["within_noise"]
    assert speedup_stats([1.0] * 3, [1 / 1.03] * 3)["within_noise"]  # below the threshold
    assert speedup_stats([1.0] * 3, [0.05] * 3)["suspicious"]


def test_few_rounds_of_one_sided_noise_are_noise() -> None:
    """Three rounds whose noise favoured the baseline each time (1 time in 4 by chance): the
    bootstrap interval is about their range, [1.03, 1.10], and excluded 1.0, so a no-op read
    as a 1.06x gain; the paired t-interval over so few rounds does not exclude it. A steady
    gain and a large one stay real at three rounds; at eight, the t-interval is narrow."""
    base, cand = [1.03, 1.10, 1.06], [1.0, 1.0, 1.0]
    lo, _ = bootstrap_ratio_ci(base, cand)
    assert lo > 1.0  # the bootstrap alone calls it a gain
    t_lo, t_hi = paired_t_ratio_ci(base, cand)  # type: ignore[misc]
    assert t_lo < 1.0 < t_hi
    s = speedup_stats(base, cand)
    assert s["within_noise"] and s["ci95_t"] == [t_lo, t_hi]
    steady = speedup_stats([1.30, 1.25, 1.35], [1.0, 1.0, 1.0])
    assert not steady["within_noise"] and steady["ci95_t"][0] > 1.15
    assert not speedup_stats([7.0, 9.0, 12.0], [1.0, 1.0, 1.0])["within_noise"]
    # far from 1.0 the rounds' spread is the size of the gain, not doubt about it: a 4x
    # read as 3.3x and 5.8x in two rounds (the t-interval, df 1, holds 1.0) is a gain
    two = speedup_stats([3.3, 5.8], [1.0, 1.0])
    assert two["ci95_t"][0] < 1.0 and not two["within_noise"]
    eight = paired_t_ratio_ci([1.03, 1.10, 1.06, 1.05, 1.08, 1.04, 1.07, 1.06], [1.0] * 8)
    assert eight is not None and 1.0 < eight[0] < 1.06 < eight[1] < 1.09
    assert paired_t_ratio_ci([1.0], [1.0]) is None  # one round: no interval
    assert paired_t_ratio_ci([1.0, 2.0], [1.0, 1.0, 1.0]) is None  # not paired
    assert speedup_stats([1.0, 2.0], [1.0, 1.0, 1.0])["ci95_t"] is None


def test_timer_command_runs_and_parses(tmp_path: Path) -> None:
    cmd = timer_command("echo 'quoted $HOME' > out.txt; exit 0")
    out = subprocess.run(cmd, shell=True, cwd=tmp_path, capture_output=True, text=True)
    run = parse_timer_output("noise\n" + out.stdout)
    assert run.returncode == 0 and 0 <= run.wall_s < 5
    assert (tmp_path / "out.txt").read_text() == "quoted $HOME\n"
    failing = subprocess.run(timer_command("exit 7"), shell=True, capture_output=True, text=True)
    assert parse_timer_output(failing.stdout).returncode == 7
    with pytest.raises(ValueError):
        parse_timer_output("nothing here")


# ---------------------------------------------------------------- reward


def test_reward_kinds() -> None:
    assert speedup_reward(2.0) == pytest.approx(1.0)
    assert speedup_reward(math.sqrt(2)) == pytest.approx(0.5)
    assert speedup_reward(0.5) == 0.0
    assert speedup_reward(4.0, RewardConfig(target=4.0)) == pytest.approx(1.0)
    assert speedup_reward(1.5, RewardConfig(kind="linear")) == pytest.approx(0.5)
    assert speedup_reward(1.19, RewardConfig(kind="binary")) == 0.0
    assert speedup_reward(1.2, RewardConfig(kind="binary")) == 1.0
    rel = RewardConfig(kind="relative")
    assert speedup_reward(2.0, rel, reference_speedup=4.0) == pytest.approx(0.5)
    assert speedup_reward(8.0, rel, reference_speedup=4.0) == 1.0
    assert speedup_reward(2.0, rel, reference_speedup=None) == pytest.approx(1.0)  # fallback
    assert compute_reward(3.0, correct=False) == 0.0
    assert compute_reward(3.0, correct=True, within_noise=True) == 0.0
    assert compute_reward(
        1.1, correct=True, within_noise=True, config=RewardConfig(zero_within_noise=False)
    ) == pytest.approx(math.log(1.1) / math.log(2))
    with pytest.raises(ValueError):
        RewardConfig(target=1.0)


speedups = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
kinds = st.sampled_from(["log_speedup", "linear", "binary", "relative"])


@given(a=speedups, b=speedups, kind=kinds, ref=st.none() | st.floats(0.5, 100.0))
def test_reward_is_bounded_and_monotone(a: float, b: float, kind: str, ref: float | None) -> None:
    cfg = RewardConfig.model_validate({"kind": kind})
    ra = speedup_reward(a, cfg, reference_speedup=ref)
    rb = speedup_reward(b, cfg, reference_speedup=ref)
    assert 0.0 <= ra <= 1.0 and 0.0 <= rb <= 1.0
    if a <= b:
        assert ra <= rb


def test_summarize() -> None:
    results = [
        EvalResult(reward=1.0, speedup=4.0, info={"status": "ok"}),
        EvalResult(reward=0.0, speedup=1.0, info={"status": "ok"}),
        EvalResult(reward=0.0, speedup=0.0, info={"status": "tests_failed"}),
        EvalResult(reward=0.0, speedup=1.6, info={"status": "ok", "within_noise": True}),
    ]
    s = summarize([*results[:2], results[2].as_tuple(), results[3]])
    assert s["n"] == 4 and s["n_correct"] == 3
    assert s["mean_reward"] == pytest.approx(1 / 4)
    assert s["geomean_speedup"] == pytest.approx((4 * 1.6) ** (1 / 3))
    assert s["geomean_speedup_all"] == pytest.approx((4 * 1.6) ** (1 / 4))
    # fast_p: correct, faster than p, and not within noise (the 1.6x does not count)
    assert s["fast_p"] == {
        "1.0": pytest.approx(1 / 4),
        "1.5": pytest.approx(1 / 4),
        "2.0": pytest.approx(1 / 4),
    }
    assert s["fast_1.5"] == pytest.approx(1 / 4)
    assert s["status_counts"] == {"ok": 3, "tests_failed": 1}
    empty = summarize([])
    assert empty["n"] == 0 and empty["geomean_speedup"] is None and empty["mean_reward"] == 0.0


async def test_server_answers_422_to_a_patch_that_does_not_apply(
    dataset: dict[str, str], sandboxes: Counting
) -> None:
    app = create_app(Evaluator(sandboxes, FAST_CONFIG, dataset_roots=[dataset["path"]]))
    async with serve_in_loop(app) as srv, HttpPool() as pool:
        body = _req(dataset, result=dataset["bad"]).model_dump(mode="json")
        resp = await pool.request("POST", f"{srv.url}/evaluations", json=body)
        assert resp.status == 422, resp.text()
        assert "does not apply" in resp.json()["error"]
        assert (await pool.request("GET", f"{srv.url}/healthz")).status == 200
    assert sandboxes.created == 0
