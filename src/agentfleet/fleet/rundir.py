"""A run folder: where each file of a run lives, and how the whole-file ones are written.

```
RUN_DIR/
  config.json          the run's settings and its invocations (merged on resume)
  results.jsonl        one line per finished task, appended (see results.py)
  trajectories/ID.traj.json
  pool_stats.jsonl     connection / queue snapshots, appended
  summary.json         the run's figures; wall_s sums every invocation's (in config.json)
  preds.json           the patch of each task, SWE-bench's shape (mini-swe-agent's preds.json)
  report.html          written by `agentfleet report`
```

``config.json``, ``summary.json`` and ``preds.json`` are replaced whole: written to a
temporary file in the same folder, then renamed over the old one (``os.replace``), so a
reader or a crash never sees half a file. All methods are synchronous file I/O: call them
from a thread (``asyncio.to_thread``) when an event loop is running.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["RunDir", "chosen_run", "run_name", "write_atomic"]

_TRAJ_SUFFIX = ".traj.json"


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one step: a temporary file beside it, then a rename."""
    # a unique name opened with "x" (not mkstemp): the file gets the umask's mode, not 0600
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with tmp.open("x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str))


def run_name(dataset: str, split: str, model: str, now: datetime | None = None) -> str:
    """The default name of a new run: ``<dataset>-<split>-<model>-<YYYYmmdd-HHMMSS>``."""
    model_part = model.replace("/", "_").replace(":", "_")
    return f"{Path(dataset).name}-{split}-{model_part}-{now or datetime.now():%Y%m%d-%H%M%S}"


@dataclass(frozen=True)
class RunDir:
    """The files of one run folder (nothing is created until something is written)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def results(self) -> Path:
        return self.path / "results.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def preds(self) -> Path:
        return self.path / "preds.json"

    @property
    def pool_stats(self) -> Path:
        return self.path / "pool_stats.jsonl"

    @property
    def trajectories(self) -> Path:
        return self.path / "trajectories"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    def trajectory(self, instance_id: str) -> Path:
        return self.trajectories / f"{instance_id}{_TRAJ_SUFFIX}"

    def trajectory_ids(self) -> list[str]:
        """Task ids that have a trajectory file, sorted."""
        if not self.trajectories.is_dir():
            return []
        return sorted(
            p.name.removesuffix(_TRAJ_SUFFIX)
            for p in self.trajectories.iterdir()
            if p.name.endswith(_TRAJ_SUFFIX)
        )

    def is_run(self) -> bool:
        """Whether this looks like a run folder (a config or some results)."""
        return self.results.exists() or self.config.exists()

    # config.json ----------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        """``config.json``; ``FileNotFoundError`` / ``ValueError`` when missing or bad."""
        if not self.config.is_file():
            raise FileNotFoundError(f"{self.path} is not a run folder (no {self.config.name})")
        try:
            data = json.loads(self.config.read_text())
        except ValueError as exc:  # not JSON, or not UTF-8
            raise ValueError(f"{self.config}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{self.config}: expected a JSON object")
        return data

    def merge_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """Write ``config`` as the run's config, over what a resumed run saved before: new
        keys win, ``invocations`` are appended (the history of every run / resume).
        Creates the folder and ``trajectories/``; returns what was written."""
        self.trajectories.mkdir(parents=True, exist_ok=True)
        merged = dict(config)
        try:
            old: Any = self.read_config()
        except (OSError, ValueError):  # none yet, or unreadable: start over
            old = None
        if isinstance(old, dict):
            merged = {**old, **config}
            merged["invocations"] = [*old.get("invocations", []), *config.get("invocations", [])]
        _write_json(self.config, merged)
        return merged

    # summary.json ---------------------------------------------------------------------
    def read_summary(self) -> dict[str, Any]:
        """``summary.json``, or ``{}`` when there is none (or it does not parse)."""
        try:
            data = json.loads(self.summary.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def record_wall(self, invocation: str, wall_s: float) -> None:
        """Note invocation ``invocation``'s wall time in ``config.json`` (also when it was
        stopped; nothing if the config does not list it: it stopped before writing one)."""
        try:
            config = self.read_config()
        except (OSError, ValueError):
            return
        runs = [i for i in config.get("invocations", []) if isinstance(i, dict)]
        for inv in runs:
            if inv.get("id") == invocation:
                inv["wall_s"] = round(wall_s, 3)
                _write_json(self.config, config)
                return

    def wall_s(self) -> tuple[float, float]:
        """``(whole run, legacy part)``: the wall time every invocation recorded, plus, for
        a run begun by a version that did not record it per invocation, the wall time of
        those as its summary had it (the legacy part, kept in ``summary.json``)."""
        try:
            runs = [i for i in self.read_config().get("invocations", []) if isinstance(i, dict)]
        except (OSError, ValueError):
            runs = []
        recorded = sum(float(i["wall_s"]) for i in runs if isinstance(i.get("wall_s"), int | float))
        before = self.read_summary()
        try:
            if "legacy_wall_s" in before:
                legacy = float(before["legacy_wall_s"])
            elif any("id" not in i for i in runs):
                legacy = float(before.get("wall_s", 0.0))
            else:
                legacy = 0.0
        except (TypeError, ValueError):
            legacy = 0.0
        return recorded + legacy, legacy

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json(self.summary, summary)

    # preds.json -----------------------------------------------------------------------
    def read_preds(self) -> dict[str, Any]:
        """``preds.json`` (``{instance_id: {instance_id, model_name_or_path,
        model_patch}}``), or ``{}`` when there is none (or it does not parse)."""
        try:
            data = json.loads(self.preds.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def add_pred(self, instance_id: str, model: str, patch: str | None) -> None:
        """Set one task's prediction in ``preds.json`` (the others kept; on resume too).
        The caller serializes calls (one writer per run folder)."""
        preds = self.read_preds()
        preds[instance_id] = {
            "instance_id": instance_id,
            "model_name_or_path": model,
            "model_patch": patch,
        }
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json(self.preds, preds)


def chosen_run(
    run_dir: Path | None, resume: Path | None, rerun_failed: bool
) -> tuple[Path | None, dict[str, Any]]:
    """The folder a command (``run``, ``eval preds``) writes, and the config a resumed run
    saved (``{}`` for a new one): ``resume``'s, else ``run_dir`` (None: the caller names
    one), which must hold no run yet (two runs' results in one file). ``ValueError`` with
    the user's message otherwise."""
    if resume is not None:
        if run_dir is not None and run_dir.resolve() != resume.resolve():
            raise ValueError("give either --resume RUN_DIR or --run-dir, not two different folders")
        try:
            return resume, RunDir(resume).read_config()
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot resume: {exc}") from exc
    if rerun_failed:
        raise ValueError("--rerun-failed needs --resume RUN_DIR")
    if run_dir is not None and RunDir(run_dir).is_run():
        raise ValueError(
            f"--run-dir {run_dir} holds a run already: continue it with --resume {run_dir}, "
            "or give another folder"
        )
    return run_dir, {}
