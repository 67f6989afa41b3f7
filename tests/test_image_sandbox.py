"""Image tasks on the real Docker engine: the bundled rows' images built (once, cached by
content hash), sandboxes in the task's own image, the process backend and missing images
refused, `images pull` skipping what is present. Nothing is left afterwards but the cached
task images (label agentfleet.image=task; `agentfleet images prune` removes them)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from conftest import ROWS, tiny_image
from typer.testing import CliRunner

from agentfleet.cli import app
from agentfleet.evaluation.patches import sandbox_diff
from agentfleet.sandbox.base import CreateSandbox, SandboxError
from agentfleet.sandbox.containers import DEFAULT_IMAGE
from agentfleet.sandbox.docker import DockerBackend
from agentfleet.sandbox.image_box import ImageNaming
from agentfleet.sandbox.images import image_exists
from agentfleet.sandbox.service import SandboxService
from agentfleet.tasks import Task, load_dataset

pytestmark = pytest.mark.docker


def _containers(run: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=agentfleet.run={run}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


@pytest.fixture
async def service(task_images: dict[str, Task], tmp_path: Path) -> AsyncIterator[SandboxService]:
    async with SandboxService(DockerBackend(root=tmp_path / "sb"), reap_period_s=0) as svc:
        yield svc
    assert not [p for p in (tmp_path / "sb").iterdir() if not p.name.startswith(".")]


async def test_gso_row_runs_in_its_image(service: SandboxService, task_images: dict) -> None:
    task: Task = task_images["gso-mini"]
    run = f"test-image-{id(service)}"
    info = await service.create(
        CreateSandbox(task_id=task.id, dataset="gso-mini", run=run, ttl_s=600)
    )
    sid = info.sandbox_id
    assert info.workdir == "/testbed"
    res = await service.exec(sid, "git rev-parse HEAD refs/agentfleet/base; echo $VIRTUAL_ENV")
    base = task.benchmark_fields["base_commit"]
    assert res.returncode == 0 and res.output.split() == [base, base, "/testbed/.venv"]
    # the gold patch, the rebuild (gcc via make), the workload: GSO's Execution time line
    await service.write_file(sid, "gold.patch", task.solution_patch.encode())
    res = await service.exec(sid, "git apply gold.patch && rm gold.patch && " + task.rebuild_cmd)
    assert res.returncode == 0, res.output
    assert b"(long)d * d <= n" in await service.read_file(sid, "src/primes.c")
    res = await service.exec(sid, task.workload_cmd, timeout=120)
    assert res.returncode == 0 and "Execution time:" in res.output, res.output
    # the diff is taken against the image's HEAD: only the C file, no build output
    patch = await sandbox_diff(service, sid)
    assert patch.count("diff --git") == 1 and "a/src/primes.c" in patch
    with pytest.raises(SandboxError) as err:
        await service.read_file(sid, "no/such/file")
    assert err.value.status == 404
    await service.delete(sid)
    assert _containers(run) == []


async def test_swe_perf_row_activates_conda_testbed(
    service: SandboxService, task_images: dict
) -> None:
    task: Task = task_images["swe-perf-mini"]
    info = await service.create(CreateSandbox(task_id=task.id, dataset="swe-perf-mini"))
    res = await service.exec(info.sandbox_id, "echo $CONDA_DEFAULT_ENV; " + task.test_cmd)
    assert res.returncode == 0 and res.output.startswith("testbed\n"), res.output
    res = await service.exec(info.sandbox_id, "id -u; pwd", cwd="tests")
    assert res.output.split() == ["0", "/testbed/tests"]
    await service.delete(info.sandbox_id)


async def test_missing_image_with_pull_never_is_a_clear_error(
    task_images: dict, tmp_path: Path
) -> None:
    naming = ImageNaming(registry_prefix="localhost:1/nowhere")
    backend = DockerBackend(root=tmp_path / "sb", image_naming=naming, pull="never")
    async with SandboxService(backend, reap_period_s=0) as svc:
        req = CreateSandbox(task_id=ROWS["gso-mini"], dataset="gso-mini", run="pull-never")
        with pytest.raises(SandboxError, match="not present and --pull is never") as err:
            await svc.create(req)
        assert err.value.status == 503 and len(svc) == 0
    assert _containers("pull-never") == []


def test_images_pull_skips_present_and_refuses_never(task_images: dict) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["images", "pull", "--dataset", "gso-mini", "--pull", "never"])
    present = [i for i in (load_dataset("gso-mini").tasks()) if image_exists(i.image or "")]
    if len(present) == 3:  # every gso-mini image built: nothing to pull
        assert res.exit_code == 0 and "3 present, 0 pulled" in res.output
    else:
        assert res.exit_code == 1 and "--pull never" in res.output
    res = runner.invoke(
        app,
        [
            "images",
            "pull",
            "-d",
            "gso-mini",
            "--registry-prefix",
            "localhost:1/x",
            "--pull",
            "never",
        ],
    )
    assert res.exit_code == 1 and "missing and --pull never" in res.output


async def test_a_file_grown_after_its_stat_is_over_the_cap(
    task_images: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read streams the engine's archive and stops past the cap: a file swapped for a
    huge one between the size check and the read is a 413 (the whole archive was read into
    memory, 2 GB of server memory for a 1 GB file, and cut to a 200 of the cap)."""
    from agentfleet.sandbox import image_box

    async with SandboxService(
        DockerBackend(root=tmp_path / "sb", max_file_bytes=64), reap_period_s=0
    ) as svc:
        info = await svc.create(CreateSandbox(task_id=ROWS["gso-mini"], dataset="gso-mini"))
        await svc.exec(info.sandbox_id, "head -c 100000 /dev/zero > big.bin")

        async def small(container: object, path: str) -> dict[str, int]:
            return {"mode": 0o644, "size": 1}  # as it was at the stat

        monkeypatch.setattr(image_box, "_stat", small)
        with pytest.raises(SandboxError) as err:
            await svc.read_file(info.sandbox_id, "big.bin")
        assert err.value.status == 413


async def test_image_file_cap(task_images: dict, tmp_path: Path) -> None:
    async with SandboxService(
        DockerBackend(root=tmp_path / "sb", max_file_bytes=64), reap_period_s=0
    ) as svc:
        info = await svc.create(CreateSandbox(task_id=ROWS["gso-mini"], dataset="gso-mini"))
        with pytest.raises(SandboxError) as err:
            await svc.read_file(info.sandbox_id, "src/primes.c")
        assert err.value.status == 413
        with pytest.raises(SandboxError) as err:
            await svc.write_file(info.sandbox_id, "big.txt", b"x" * 65)
        assert err.value.status == 413
        with pytest.raises(SandboxError) as err:
            await svc.read_file(info.sandbox_id, "src")  # a folder
        assert err.value.status == 422
        # a write over a folder (or to no file name) is refused, as on the process backend:
        # put_archive replaced the folder by the file
        for folder in ("src", "src/", "/"):
            with pytest.raises(SandboxError) as err:
                await svc.write_file(info.sandbox_id, folder, b"x")
            assert err.value.status == 400, folder
        r = await svc.exec(info.sandbox_id, "test -d src && echo still-a-folder")
        assert r.output.strip() == "still-a-folder", r.output
        # a cwd that is no folder: 400 at once (it was taken for a stopped container: a
        # 126 after 10 s of waiting for it to stop)
        for cwd in ("nonexistent", "src/primes.c"):
            with pytest.raises(SandboxError) as err:
                await svc.exec(info.sandbox_id, "pwd", cwd=cwd)
            assert err.value.status == 400 and "no directory" in str(err.value), cwd


def test_images_load_and_prune_only_labelled(task_images: dict, tmp_path: Path) -> None:
    import uuid

    from agentfleet.sandbox.image_pull import prune_images

    kind = f"test-{uuid.uuid4().hex[:8]}"
    labelled, other = f"agentfleet-test-{kind}:1", f"agentfleet-test-{kind}:plain"
    try:
        tiny_image(tmp_path, labelled, kind)
        tiny_image(tmp_path, other, None)
        subprocess.run(["docker", "save", "-o", str(tmp_path / "s.tar"), labelled], check=True)
        subprocess.run(["docker", "rmi", labelled], check=True, capture_output=True)
        res = CliRunner().invoke(app, ["images", "load", str(tmp_path / "s.tar")])
        assert res.exit_code == 0 and image_exists(labelled)
        assert prune_images([kind], log=lambda _: None) == 1
        assert not image_exists(labelled) and image_exists(other)
    finally:
        subprocess.run(["docker", "rmi", "-f", labelled, other], capture_output=True)


def _image_dataset(ds: Path, task_id: str, image: str, workdir: str) -> Path:
    """A folder dataset of one task that runs in ``image`` at ``workdir``."""
    (ds / task_id).mkdir(parents=True)
    (ds / "dataset.yaml").write_text(f"name: ds\nsplits: {{test: [{task_id}]}}\n")
    (ds / task_id / "task.yaml").write_text(
        f"prompt: p\ntest_cmd: 'true'\nworkload_cmd: 'true'\nimage: {image}\nworkdir: {workdir}\n"
    )
    return ds


async def test_folder_task_naming_an_image_without_a_repo(
    task_images: dict, tmp_path: Path
) -> None:
    """The folder format's image fields; a workdir with no git commit is refused, cleanly."""
    ds = _image_dataset(tmp_path / "ds", "no-repo", DEFAULT_IMAGE, "/tmp")
    async with SandboxService(
        DockerBackend(root=tmp_path / "sb"), reap_period_s=0, dataset_roots=[ds]
    ) as svc:
        req = CreateSandbox(task_id="no-repo", dataset=str(ds), run="no-repo-test")
        with pytest.raises(SandboxError, match="no git repository at /tmp") as err:
            await svc.create(req)
        assert err.value.status == 422 and len(svc) == 0
    assert _containers("no-repo-test") == []


@pytest.fixture
def untracked_image(task_images: dict, tmp_path: Path) -> Iterator[str]:
    """An image whose repo (/repo) holds build output its .gitignore misses."""
    import uuid

    image = f"agentfleet-test-untracked:{uuid.uuid4().hex[:8]}"
    script = (
        "set -e; mkdir /repo; cd /repo; git init -q; echo 'int x;' > a.c; git add a.c; "
        "git -c user.name=t -c user.email=t@t commit -qm base; "
        "echo bin > a.out; mkdir obj; echo o > 'obj/w[1] *.o'"
    )
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "Dockerfile").write_text(f"FROM {DEFAULT_IMAGE}\nRUN {script}\n")
    build = ["docker", "build", "-q", "-t", image, str(tmp_path / "img")]
    subprocess.run(build, check=True, capture_output=True)
    yield image
    subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


async def test_untracked_build_output_of_the_image_is_not_in_the_diff(
    untracked_image: str, tmp_path: Path
) -> None:
    """What the image held untracked is not the agent's change, even rebuilt; the agent's
    own edits and new files are."""
    ds = _image_dataset(tmp_path / "ds", "t", untracked_image, "/repo")
    async with SandboxService(
        DockerBackend(root=tmp_path / "sb"), reap_period_s=0, dataset_roots=[ds]
    ) as svc:
        info = await svc.create(CreateSandbox(task_id="t", dataset=str(ds), run="untracked"))
        sid = info.sandbox_id
        edit = "echo 'int y;' >> a.c && echo 2 > a.out && echo 2 > 'obj/w[1] *.o' && echo n > new"
        res = await svc.exec(sid, edit)
        assert res.returncode == 0, res.output
        patch = await sandbox_diff(svc, sid)
        assert patch.count("diff --git") == 2, patch
        assert "a/a.c" in patch and "b/new" in patch
        await svc.delete(sid)


def test_prune_dataset_keeps_the_base_and_bench_images(task_images: dict, tmp_path: Path) -> None:
    """A dataset whose rows name agentfleet's own images (base, bench) prunes neither: they
    are said to be kept, and nothing is removed."""
    from agentfleet.sandbox.containers import DEFAULT_IMAGE
    from agentfleet.sandbox.task_images import BENCH_IMAGE
    from agentfleet.tasks import load_dataset

    ids = [t.id for t in load_dataset("gso-mini").tasks()]
    image_map = tmp_path / "map.json"
    image_map.write_text(json.dumps({ids[0]: DEFAULT_IMAGE, **dict.fromkeys(ids[1:], BENCH_IMAGE)}))
    args = ["images", "prune", "-d", "gso-mini", "--image-map", str(image_map), "--yes"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"kept (agentfleet's own, shared): {DEFAULT_IMAGE}, {BENCH_IMAGE}" in res.output
    assert "nothing to remove" in res.output, res.output
    assert image_exists(DEFAULT_IMAGE) and image_exists(BENCH_IMAGE)
