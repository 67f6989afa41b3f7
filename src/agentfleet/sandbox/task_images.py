"""Images of real-benchmark tasks, built locally (``agentfleet images build --dataset``).

A bundled ``*-mini`` dataset ships each row's repository under
``<dataset>/images/<instance_id>/repo/``. Its image is built ``FROM`` the bench base
(``agentfleet-bench:bookworm``: the base image plus gcc, make and python3-pytest), the
repository at ``/testbed`` with a git history made the same way here and in the image (fixed
author and dates, so ``base_commit`` and GSO's ``opt_commit`` are the hashes the rows
name): ``main`` at the base commit (after a first one: the root is not the baseline), a
``gold`` branch with the gold patch applied. The
environments the profiles activate exist as small shims (``/testbed/.venv``, conda
``testbed`` under ``/opt/miniconda3``); the task's ``rebuild_cmd`` runs once. Each image
is tagged with the name its profile computes (``slimshetty/gso:gso.eval...``), labelled
``agentfleet.image=task`` and with a content hash: an unchanged row is not rebuilt.

Blocking subprocesses: command-line actions, never called from an event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from agentfleet.sandbox.images import (
    IMAGE_LABEL,
    ImageBuildError,
    cache_dir,
    image_exists,
    image_id,
)
from agentfleet.tasks.task import Task

BENCH_IMAGE = "agentfleet-bench:bookworm"
BENCH_PACKAGES = ("gcc", "make", "libc6-dev", "python3-pytest")
CONTENT_LABEL = "agentfleet.content"
DATASET_LABEL = "agentfleet.dataset"

Log = Callable[[str], None]

# The repository's history, the same on the host (to compute the hashes) and in the image.
GIT_SCRIPT = """\
set -e
export GIT_AUTHOR_NAME=agentfleet GIT_AUTHOR_EMAIL=agentfleet@localhost
export GIT_COMMITTER_NAME=agentfleet GIT_COMMITTER_EMAIL=agentfleet@localhost
export GIT_AUTHOR_DATE='2024-01-01T00:00:00+0000' GIT_COMMITTER_DATE='2024-01-01T00:00:00+0000'
git init -q -b main .
git add .gitignore
git commit -q -m initial
git add -A
git commit -q -m base
if [ -s "$1" ]; then
  git checkout -q -b gold
  git apply "$1"
  git add -A
  git commit -q -m gold
  git checkout -q main
fi
"""

# Environment shims: what the profiles source exists, with python = python3.
ENV_SCRIPT = """\
set -e
mkdir -p /testbed/.venv/bin /opt/miniconda3/bin /opt/miniconda3/envs/testbed/bin
ln -sf /usr/bin/python3 /testbed/.venv/bin/python
ln -sf /usr/bin/python3 /opt/miniconda3/envs/testbed/bin/python
printf 'export VIRTUAL_ENV=/testbed/.venv\\nexport PATH=/testbed/.venv/bin:$PATH\\n' \\
  > /testbed/.venv/bin/activate
printf '[ "$1" = testbed ] || { echo "no conda env $1" >&2; return 1; }\\n%s\\n' \\
  'export CONDA_DEFAULT_ENV=testbed PATH=/opt/miniconda3/envs/testbed/bin:$PATH' \\
  > /opt/miniconda3/bin/activate
echo .venv/ >> /testbed/.git/info/exclude
"""

BENCH_DOCKERFILE = f"""\
ARG BASE
FROM ${{BASE}}
RUN apt-get update -qq \\
 && apt-get install -y -qq --no-install-recommends {" ".join(BENCH_PACKAGES)} >/dev/null \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
"""

TASK_DOCKERFILE = """\
FROM {base}
COPY repo /testbed
COPY agentfleet /agentfleet
RUN cd /testbed && sh /agentfleet/git.sh /agentfleet/gold.patch && sh /agentfleet/env.sh \\
 && bash /agentfleet/rebuild.sh && rm -rf /agentfleet
WORKDIR /testbed
"""


def repo_source(task: Task) -> Path:
    """The folder a bundled row's repository is built from."""
    return task.task_dir / "images" / task.id / "repo"


def commit_hashes(repo: Path, gold_patch: str) -> tuple[str, str]:
    """(base commit, gold commit) of ``repo`` with the image's history (blocking)."""
    with tempfile.TemporaryDirectory(prefix="agentfleet-commits-") as tmp:
        work = Path(tmp) / "repo"
        shutil.copytree(repo, work)
        patch = Path(tmp) / "gold.patch"
        patch.write_text(gold_patch)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "GIT_CONFIG_NOSYSTEM": "1"}
        subprocess.run(
            ["sh", "-c", GIT_SCRIPT, "git.sh", str(patch)], cwd=work, env=env, check=True
        )

        def rev(ref: str) -> str:
            out = subprocess.run(
                ["git", "rev-parse", ref], cwd=work, env=env, check=True, capture_output=True
            )
            return out.stdout.decode().strip()

        return rev("main"), rev("gold") if gold_patch.strip() else rev("main")


def build_bench_image(
    base: str, *, name: str = BENCH_IMAGE, force: bool = False, log: Log = print
) -> str:
    """The bench base (Debian packages from the distribution's mirror: needs network)."""
    with _build_lock(name):
        if not force and image_exists(name):
            log(f"image {name} exists")
            return name
        extra = ["--network", "host", "--build-arg", f"BASE={base}"]
        _docker_build(
            BENCH_DOCKERFILE, None, [*extra, "--label", f"{IMAGE_LABEL}=bench"], name, log
        )
    return name


def _rebuild_script(task: Task) -> str:
    lines = ["set -e", "cd /testbed"]
    if task.env_activate:
        lines.append(task.env_activate)
    if task.rebuild_cmd:
        lines.append(task.rebuild_cmd)
    return "\n".join(lines) + "\n"


def _content_hash(task: Task, base_id: str, dockerfile: str, repo: Path) -> str:
    h = hashlib.sha256()
    for part in (
        base_id,
        dockerfile,
        GIT_SCRIPT,
        ENV_SCRIPT,
        _rebuild_script(task),
        task.solution_patch,
    ):
        h.update(part.encode() + b"\0")
    for f in sorted(p for p in repo.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(repo)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _label(image: str, key: str) -> str | None:
    proc = subprocess.run(
        ["docker", "image", "inspect", "--format", f'{{{{index .Config.Labels "{key}"}}}}', image],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def build_task_image(
    task: Task, image: str, *, base: str = BENCH_IMAGE, force: bool = False, log: Log = print
) -> bool:
    """Build ``task``'s image as ``image`` unless one with the same content exists.
    Returns whether it was built."""
    repo = repo_source(task)
    if not repo.is_dir():
        raise ImageBuildError(
            f"{task.id}: no build context {repo} (only bundled rows are built here; "
            "pull or load the benchmark's own images)"
        )
    base_id = image_id(base)
    if not base_id:
        raise ImageBuildError(f"base image {base!r} is missing: `agentfleet images build` first")
    dockerfile = TASK_DOCKERFILE.format(base=base)
    content = _content_hash(task, base_id, dockerfile, repo)
    with _build_lock(image):  # two builders of one image (test workers): one builds
        if not force and _label(image, CONTENT_LABEL) == content:
            log(f"{task.id}: image {image} is up to date")
            return False
        _build(task, image, repo, dockerfile, content, log)
    log(f"{task.id}: built {image}")
    return True


@contextlib.contextmanager
def _build_lock(image: str) -> Iterator[None]:
    folder = cache_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(image.encode()).hexdigest()[:16]
    with open(folder / f"image-{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _build(task: Task, image: str, repo: Path, dockerfile: str, content: str, log: Log) -> None:
    with tempfile.TemporaryDirectory(prefix="agentfleet-task-image-") as tmp:
        ctx = Path(tmp)
        shutil.copytree(repo, ctx / "repo", symlinks=True)
        meta = ctx / "agentfleet"
        meta.mkdir()
        (meta / "git.sh").write_text(GIT_SCRIPT)
        (meta / "env.sh").write_text(ENV_SCRIPT)
        (meta / "rebuild.sh").write_text(_rebuild_script(task))
        (meta / "gold.patch").write_text(task.solution_patch)
        labels = {IMAGE_LABEL: "task", CONTENT_LABEL: content, DATASET_LABEL: task.dataset}
        extra = ["--network", "none"]
        for key, value in labels.items():
            extra += ["--label", f"{key}={value}"]
        previous = image_id(image)
        _docker_build(dockerfile, ctx, extra, image, log)
    if previous and previous != image_id(image):  # the outdated build, now untagged
        subprocess.run(["docker", "rmi", previous], capture_output=True, check=False)


def _docker_build(
    dockerfile: str, ctx: Path | None, extra: Iterable[str], name: str, log: Log
) -> None:
    with tempfile.TemporaryDirectory(prefix="agentfleet-build-") as empty:
        context = str(ctx or empty)
        argv = ["docker", "build", "-q", *extra, "-t", name, "-f", "-", context]
        log("+ " + " ".join(argv))
        proc = subprocess.run(argv, input=dockerfile.encode(), capture_output=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-15:]
        raise ImageBuildError(f"docker build of {name} failed:\n" + "\n".join(tail))
