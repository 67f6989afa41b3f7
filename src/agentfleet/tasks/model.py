"""The task model: a folder task (perf-lite) or an image task (real benchmarks),
documented in docs/tasks.md. Its own module so the benchmark profiles build tasks without
importing the dataset loader that calls them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agentfleet.tasks.defaults import MAX_EVAL_REPEATS, MAX_EVAL_WARMUP

# How a workload's time is read (docs/tasks.md): the whole process, or the lines it prints.
WorkloadParser = Literal["wall", "gso", "pytest", "mean"]
# Which benchmark a task comes from: its pass rule and the fields in ``benchmark_fields``.
Benchmark = Literal["perf-lite", "gso", "swe-perf", "swefficiency"]
DEFAULT_IMAGE_WORKDIR = "/testbed"


class Task(BaseModel):
    """One performance task: a repository with a slow spot, its commands and a reference patch.

    A folder task (perf-lite) has its code in ``task_dir/repo``. An image task names an
    ``image`` whose ``workdir`` already holds the repository with its git history: the
    baseline is the image's tree, nothing is copied from the host.
    """

    model_config = ConfigDict(frozen=True)

    id: str = Field(max_length=200)
    dataset: str
    title: str = ""
    kind: str = ""
    prompt: str
    test_cmd: str
    workload_cmd: str
    test_files: list[str] = Field(default_factory=list)
    timeout_s: float = 120.0
    task_dir: Path
    # image tasks (docs/tasks.md, "Image tasks")
    image: str | None = None
    workdir: str | None = None  # None: the host copy; an image task defaults to /testbed
    env_activate: str = ""  # sourced before every command, e.g. "source /opt/venv/bin/activate"
    rebuild_cmd: str = ""  # run after a patch is applied, before tests and timing
    workload_parser: WorkloadParser = "wall"
    gold_patch: str = ""  # the patch text; empty: solution.patch in task_dir, if any
    benchmark: Benchmark = "perf-lite"
    benchmark_fields: dict[str, Any] = Field(default_factory=dict)  # read by the scorer
    # the benchmark's own timing protocol (set by its profile): timed rounds per side and
    # untimed runs per arm before them (the output check included); the evaluation uses
    # them when its operator set none (EvalConfig.protocol). None: the evaluation's default
    repeats: int | None = Field(default=None, ge=1, le=MAX_EVAL_REPEATS)
    warmup: int | None = Field(default=None, ge=0, le=MAX_EVAL_WARMUP)

    @field_validator("id")
    @classmethod
    def _file_name(cls, value: str) -> str:
        """A task id names files of a run (``trajectories/ID.traj.json``)."""
        if not value or value.startswith(".") or any(c in value for c in "/\\\0"):
            raise ValueError("a task id names a file: no '/', '\\' or NUL, no leading '.'")
        return value

    @model_validator(mode="before")
    @classmethod
    def _image_workdir(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("image") and not data.get("workdir"):
            data = {**data, "workdir": DEFAULT_IMAGE_WORKDIR}
        return data

    @model_validator(mode="after")
    def _workdir_needs_image(self) -> Task:
        if self.workdir is not None and not self.image:
            raise ValueError(f"task {self.id!r}: workdir {self.workdir!r} needs an image")
        if self.workdir is not None and not self.workdir.startswith("/"):
            raise ValueError(f"task {self.id!r}: workdir {self.workdir!r} is not absolute")
        return self

    @property
    def is_image_task(self) -> bool:
        """The repository lives in the task's own image (docker backend only)."""
        return self.image is not None

    @property
    def repo_dir(self) -> Path:
        return self.task_dir / "repo"

    @property
    def solution_patch(self) -> str:
        if self.gold_patch:
            return self.gold_patch
        path = self.task_dir / "solution.patch"
        return path.read_text() if path.exists() else ""
