"""What a dataset name or a task folder may make the servers do on the host: nothing.

Servers load only bundled datasets and those under their ``--dataset-root`` folders (404
otherwise, ``..`` and symlinks resolved first); host git never reads a task's own git config,
attributes, hooks or filters; the copy of a task never follows a symlink out of it; the files
API refuses FIFOs and sockets at once. Real servers on 127.0.0.1, real git, real bwrap /
Docker where available.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool
from test_sandbox_docker import _docker_problem
from typer.testing import CliRunner

from agentfleet.agent import AgentConfig
from agentfleet.cli import app as cli_app
from agentfleet.evaluation.evaluator import BadSubmission, EvalConfig, Evaluator
from agentfleet.evaluation.schema import EvalRequest
from agentfleet.evaluation.server import create_app as eval_app
from agentfleet.fleet.runner import FleetConfig, run_fleet
from agentfleet.http import HttpPool
from agentfleet.models import ModelSpec
from agentfleet.sandbox import CreateSandbox, SandboxClient, SandboxError, SandboxService, confined
from agentfleet.sandbox.command_env import GIT_ENV
from agentfleet.sandbox.docker import DockerBackend
from agentfleet.sandbox.process import ProcessBackend
from agentfleet.sandbox.server import create_app as sandbox_app
from agentfleet.serving import serve_in_loop
from agentfleet.tasks import TaskNotFound, load_dataset

PERF_LITE_TASK = load_dataset("perf-lite").task_ids()[0]
TASK_YAML = "prompt: p\ntest_cmd: 'true'\nworkload_cmd: cat data.txt\n"


def write_dataset(folder: Path, tasks: dict[str, dict[str, str]]) -> Path:
    """A dataset folder: ``tasks`` maps each task id to its repo's files."""
    folder.mkdir(parents=True)
    ids = ", ".join(tasks)
    (folder / "dataset.yaml").write_text(f"name: {folder.name}\nsplits:\n  test: [{ids}]\n")
    for task_id, files in tasks.items():
        (folder / task_id).mkdir()
        (folder / task_id / "task.yaml").write_text(TASK_YAML)
        for rel, text in files.items():
            path = folder / task_id / "repo" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return folder


# --------------------------------------------------------------------------- a malicious task


def make_evil_task(task_dir: Path, marks: Path) -> None:
    """A repo whose own git config, attributes and hooks would write into ``marks`` if the
    host's git ever read them: a clean filter on every file, an fsmonitor command, hooks."""
    repo = task_dir / "repo"
    env = {**os.environ, **GIT_ENV}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    with (repo / ".git" / "config").open("a") as f:
        f.write(
            textwrap.dedent(f"""\
            [filter "x"]
            \tclean = touch {marks}/clean; cat
            \tsmudge = touch {marks}/smudge; cat
            \trequired = true
            [core]
            \tfsmonitor = touch {marks}/fsmonitor
            \thooksPath = .githooks
            [diff "x"]
            \ttextconv = touch {marks}/textconv; cat
            """)
        )
    for hooks in (repo / ".git" / "hooks", repo / ".githooks"):
        hooks.mkdir(exist_ok=True)
        for name in ("pre-commit", "post-commit", "commit-msg", "post-checkout", "pre-auto-gc"):
            hook = hooks / name
            hook.write_text(f"#!/bin/sh\ntouch {marks}/hook-{name}\n")
            hook.chmod(0o755)
    (repo / ".gitattributes").write_text("* filter=x diff=x\n")
    # a nested repository by a `gitdir:` file pointing at the task's own .git
    (repo / "vendored").mkdir()
    (repo / "vendored" / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    (repo / "vendored" / "lib.txt").write_text("lib\n")


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    folder = tmp_path / "marks"
    folder.mkdir()
    return folder


@pytest.fixture
def roots(tmp_path: Path, marks: Path) -> dict[str, Path]:
    """``root``: the dataset root the servers are given, holding ``good`` (tasks ``ok``,
    ``evil``, ``link-in``, ``link-abs``, ``link-up``, ``repo-link``, ``escape``) and the
    symlink ``linked`` to ``outside``, a dataset out of the root."""
    root = tmp_path / "root"
    secret = tmp_path / "host-secret"
    secret.mkdir()
    (secret / "id_rsa").write_text("PRIVATE KEY\n")
    outside = write_dataset(tmp_path / "outside", {"t1": {"data.txt": "out\n"}})
    good = write_dataset(
        root / "good",
        {
            "ok": {"data.txt": "fine\n"},
            "evil": {"data.txt": "fine\n"},
            "link-in": {"data.txt": "fine\n", "sub/x.txt": "x\n"},
            "link-abs": {"data.txt": "fine\n"},
            "link-up": {"data.txt": "fine\n"},
            "repo-link": {},
            "escape": {},
        },
    )
    make_evil_task(good / "evil", marks)
    (good / "link-in" / "repo" / "alias.txt").symlink_to("data.txt")
    (good / "link-in" / "repo" / "sub" / "up.txt").symlink_to("../data.txt")
    (good / "link-abs" / "repo" / "id_rsa").symlink_to(secret / "id_rsa")
    (good / "link-up" / "repo" / "id_rsa").symlink_to(
        os.path.relpath(secret / "id_rsa", good / "link-up" / "repo")
    )
    (good / "repo-link" / "repo").symlink_to(secret)
    shutil.rmtree(good / "escape")  # a listed task whose folder is a symlink out of the dataset
    (good / "escape").symlink_to(outside / "t1")
    (root / "linked").symlink_to(outside)
    return {"root": root, "good": good, "outside": outside, "secret": secret}


# --------------------------------------------------------------------------- servers


def make_backend(name: str, root: Path) -> Any:
    if name == "docker":
        require_tool("docker", "the docker backend's sandboxes", problem=_docker_problem())
        return DockerBackend(root=root)
    return ProcessBackend(root)


@pytest.fixture(params=["process", pytest.param("docker", marks=pytest.mark.docker)])
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def sandbox_server(
    backend_name: str, tmp_path: Path, roots: dict[str, Path]
) -> AsyncIterator[str]:
    service = SandboxService(
        make_backend(backend_name, tmp_path / "sandboxes"),
        reap_period_s=0,
        dataset_roots=[roots["root"]],
    )
    async with serve_in_loop(sandbox_app(service)) as running:
        yield running.url


async def request(method: str, url: str, **kw: Any) -> tuple[int, Any]:
    resp = await HttpPool.for_loop().request(method, url, **kw)
    try:
        return resp.status, resp.json()
    except ValueError:
        return resp.status, resp.text()


async def create(url: str, dataset: str, task_id: str) -> tuple[int, Any]:
    return await request("POST", url + "/sandboxes", json={"dataset": dataset, "task_id": task_id})


# --------------------------------------------------------------------------- dataset roots


@pytest.mark.parametrize("backend_name", ["process"])
async def test_sandbox_server_loads_only_bundled_and_rooted_datasets(
    sandbox_server: str, roots: dict[str, Path]
) -> None:
    url = sandbox_server
    good, outside = roots["good"], roots["outside"]
    refused = [
        (str(outside), "t1"),  # a dataset folder anywhere on the disk
        (str(roots["root"] / ".." / "outside"), "t1"),  # `..` out of the root
        (str(roots["root"] / "linked"), "t1"),  # a symlink in the root to a folder outside
        ("linked", "t1"),  # the same by name
        ("../outside", "t1"),
        ("/", "t1"),
        ("no-such-dataset", "t1"),
        ("bad\x00name", "t1"),
        ("x" * 5000, "t1"),
        (str(good), "escape"),  # a task folder that is a symlink out of the dataset
        (str(good), "repo-link"),  # a task repo that is a symlink to a host folder
    ]
    for dataset, task_id in refused:
        status, body = await create(url, dataset, task_id)
        assert status == 404, (dataset, status, body)
        said = body["error"].replace(repr(dataset[:200]), "<the name given>")
        assert str(roots["root"].parent) not in said, said  # no path of the server's
    for dataset in (str(good), "good", str(roots["root"] / "x" / ".." / "good"), "perf-lite"):
        task_id = "ok" if dataset != "perf-lite" else PERF_LITE_TASK
        status, body = await create(url, dataset, task_id)
        assert status == 201, (dataset, body)
        assert (await request("DELETE", f"{url}/sandboxes/{body['sandbox_id']}"))[0] == 204
    status, body = await request("GET", url + "/healthz")
    assert status == 200


def test_load_dataset_with_roots(roots: dict[str, Path]) -> None:
    root = roots["root"]
    assert load_dataset("good", [root]).path == roots["good"].resolve()
    assert load_dataset(str(roots["good"]), [roots["good"]]).name == "good"  # a root itself
    assert load_dataset(str(roots["outside"])).name == "outside"  # no roots: any folder (CLI)
    for name in (str(roots["outside"]), "linked", str(root / "linked"), "../outside"):
        with pytest.raises(TaskNotFound, match="dataset roots"):
            load_dataset(name, [root])
    with pytest.raises(TaskNotFound, match="outside its folder"):
        load_dataset("good", [root]).task("escape")
    with pytest.raises(TaskNotFound, match="symlink"):
        load_dataset("good", [root]).task("repo-link")


async def test_eval_server_loads_only_rooted_datasets(
    tmp_path: Path, roots: dict[str, Path]
) -> None:
    sandboxes = SandboxService(
        ProcessBackend(tmp_path / "sandboxes"), reap_period_s=0, dataset_roots=[roots["root"]]
    )
    evaluator = Evaluator(sandboxes, EvalConfig(repeats=1), dataset_roots=[roots["root"]])
    async with sandboxes, serve_in_loop(eval_app(evaluator)) as running:
        submit = running.url + "/evaluations"
        base = {"exit_status": "Submitted", "instance_id": "t1", "split": "test"}
        bad_patch = "--- a/data.txt\n+++ b/data.txt\n@@ -1 +1 @@\n-nope\n+no\n"
        for dataset in (str(roots["outside"]), "linked", str(roots["root"] / ".." / "outside")):
            status, body = await request(
                "POST", submit, json={**base, "dataset_name": dataset, "result": bad_patch}
            )
            assert status == 404, (dataset, body)
            said = body["error"].replace(repr(dataset), "<the name given>")
            assert "dataset roots" in said and str(roots["root"].parent) not in said, said
        # inside the root the dataset loads: the patch is checked (and refused) against it
        status, body = await request(
            "POST",
            submit,
            json={**base, "instance_id": "ok", "dataset_name": "good", "result": bad_patch},
        )
        assert status == 422 and "does not apply" in body["error"], body


def test_dataset_root_flag_must_name_a_folder(tmp_path: Path) -> None:
    for command in ("serve-sandbox", "serve-eval"):
        res = CliRunner().invoke(cli_app, [command, "--dataset-root", str(tmp_path / "nope")])
        assert res.exit_code == 2, res.output
        said = " ".join(res.output.split())
        assert "--dataset-root" in said and "is not a folder" in said, said


def test_a_task_id_cannot_name_a_path_outside_the_run(tmp_path: Path) -> None:
    """A task.yaml's ``id`` names the task's files in a run folder
    (``trajectories/ID.traj.json``): ``../../x`` wrote a trajectory outside the run. It is
    refused, one line naming the file, exit 2, and nothing is written."""
    ds = tmp_path / "ds"
    (ds / "t1" / "repo").mkdir(parents=True)
    (ds / "dataset.yaml").write_text("name: evil\nsplits:\n  test: [t1]\n")
    task = "id: ../../../escaped\nprompt: p\ntest_cmd: 'true'\nworkload_cmd: 'true'\n"
    (ds / "t1" / "task.yaml").write_text(task)
    run_dir = tmp_path / "a" / "b" / "run"
    res = CliRunner().invoke(
        cli_app,
        ["run", "--dataset", str(ds), "--model", "oracle", "--run-dir", str(run_dir)],
    )
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "task.yaml: id: Value error, a task id names a file" in said, said
    assert not list(tmp_path.rglob("escaped*")) and not run_dir.exists()


# --------------------------------------------------------------------------- host git


async def test_malicious_task_runs_nothing_on_the_host(
    sandbox_server: str, roots: dict[str, Path], marks: Path
) -> None:
    url = sandbox_server
    status, body = await create(url, str(roots["good"]), "evil")
    assert status == 201, body
    assert sorted(os.listdir(marks)) == []  # no filter, fsmonitor or hook ran on the host
    sid = body["sandbox_id"]
    client = SandboxClient(url)
    try:
        r = await client.exec(sid, "git log --format=%s; cat .git/config; ls -a; ls .git")
        assert r.returncode == 0, r.output
        assert r.output.startswith("base\n")
        assert "filter" not in r.output and "fsmonitor" not in r.output  # a fresh .git
        assert ".gitattributes" in r.output.split()  # the task's content is all there
        assert "hooks" not in r.output.split()  # no template hooks either
        assert await client.read_file(sid, "data.txt") == b"fine\n"
        r = await client.exec(sid, "ls -A vendored; git ls-files")
        assert r.output.split()[:1] == ["lib.txt"] and "vendored/lib.txt" in r.output, r.output
    finally:
        await client.delete(sid)
    assert sorted(os.listdir(marks)) == []


async def test_evaluator_check_never_reads_the_tasks_git(
    tmp_path: Path, roots: dict[str, Path], marks: Path
) -> None:
    """``git apply --check`` runs on the host against the task's own folder, which holds a
    ``.git`` with a clean filter: git must not open that repository."""
    evaluator = Evaluator(
        SandboxClient("http://127.0.0.1:9"), EvalConfig(), dataset_roots=[roots["root"]]
    )

    def req(patch: str) -> EvalRequest:
        return EvalRequest(
            exit_status="Submitted",
            instance_id="evil",
            dataset_name=str(roots["good"]),
            result=patch,
        )

    good_patch = "--- a/data.txt\n+++ b/data.txt\n@@ -1 +1 @@\n-fine\n+finer\n"
    await evaluator.check(req(good_patch))
    with pytest.raises(BadSubmission, match="does not apply"):
        await evaluator.check(req(good_patch.replace("-fine", "-nope")))
    assert sorted(os.listdir(marks)) == []


# --------------------------------------------------------------------------- symlinks


async def test_symlinks_out_of_the_task_are_refused(
    sandbox_server: str, roots: dict[str, Path], tmp_path: Path
) -> None:
    url = sandbox_server
    for task_id in ("link-abs", "link-up"):
        status, body = await create(url, str(roots["good"]), task_id)
        assert status == 422, (task_id, body)
        assert "symlink pointing outside" in body["error"] and "id_rsa" in body["error"]
        assert str(roots["secret"]) not in body["error"]
    status, body = await create(url, str(roots["good"]), "repo-link")
    assert status == 404 and "symlink" in body["error"], body
    assert await asyncio.to_thread(os.listdir, tmp_path / "sandboxes") == []  # nothing left
    # links that stay inside are copied as links
    status, body = await create(url, str(roots["good"]), "link-in")
    assert status == 201, body
    sid = body["sandbox_id"]
    client = SandboxClient(url)
    try:
        r = await client.exec(sid, "readlink alias.txt sub/up.txt; cat sub/up.txt")
        assert r.output == "data.txt\n../data.txt\nfine\n", r.output
    finally:
        await client.delete(sid)


# --------------------------------------------------------------------------- files API


async def test_fifo_and_socket_are_refused_at_once(sandbox_server: str) -> None:
    url = sandbox_server
    client = SandboxClient(url)
    sid = (await client.create(CreateSandbox())).sandbox_id
    try:
        sock = "import socket; socket.socket(socket.AF_UNIX).bind('sock')"
        r = await client.exec(sid, f'mkfifo fifo && python3 -c "{sock}" && ls')
        assert r.returncode == 0 and {"fifo", "sock"} <= set(r.output.split()), r.output
        calls: list[Callable[[], Any]] = []
        for name in ("fifo", "sock"):
            calls.append(lambda n=name: client.read_file(sid, n))
            calls.append(lambda n=name: client.write_file(sid, n, b"data"))
        async with asyncio.timeout(120):  # generous: the answer is asserted, not the time
            for call in calls:
                with pytest.raises(SandboxError, match="not a regular file") as err:
                    await call()
                assert err.value.status == 400
        # the server still serves, and the files are untouched
        await client.write_file(sid, "ok.txt", b"fine")
        assert await client.read_file(sid, "ok.txt") == b"fine"
        r = await client.exec(sid, "test -p fifo && test -S sock && echo same")
        assert r.output == "same\n"
    finally:
        await client.delete(sid)


# --------------------------------------------------------------------------- the runner


@pytest.mark.slow
async def test_runner_serves_its_own_folder_dataset(tmp_path: Path) -> None:
    """The embedded servers are given the run's dataset folder as their dataset root."""
    task = await asyncio.to_thread(lambda: load_dataset("perf-lite").task(PERF_LITE_TASK))
    ds = tmp_path / "my-tasks"
    ds.mkdir()
    (ds / "dataset.yaml").write_text(f"splits:\n  test: [{task.id}]\n")
    await asyncio.to_thread(shutil.copytree, task.task_dir, ds / task.id)
    cfg = FleetConfig(
        model=ModelSpec("oracle"),
        dataset=str(ds),
        run_dir=tmp_path / "run",
        agent=AgentConfig(step_limit=6),
        sandbox_root=tmp_path / "sandboxes",
        eval_repeats=1,
    )
    (outcome,) = await run_fleet(cfg)
    assert outcome.exit_status == "Submitted", outcome
    assert outcome.info["status"] == "ok", outcome.info


def test_fifo_with_a_reader_is_refused_before_any_write(tmp_path: Path) -> None:
    """With a reader on the FIFO, the open succeeds: the fstat check refuses it, and
    nothing is written into the pipe."""
    os.mkfifo(tmp_path / "fifo")
    reader = os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(SandboxError, match="not a regular file") as err:
            confined.write_file(tmp_path, "fifo", b"data")
        assert err.value.status == 400
        assert os.read(reader, 10) == b""  # end of file: no byte came, no writer left open
    finally:
        os.close(reader)
