"""Predictions made by any agent (SWE-bench's ``preds.json``), evaluated as a run with no
agent: ``agentfleet eval preds PREDS.json --dataset ...`` writes the same run folder
(``results.jsonl``, ``summary.json``, ``preds.json``, a report) as ``agentfleet run``.

Accepted files: ``preds.json`` (``{instance_id: {instance_id, model_name_or_path,
model_patch}}``, mini-swe-agent's), a JSON list of such records, or a ``.jsonl`` of them
(SWE-bench's and SWE-agent's). A ``model_patch`` of ``null`` is "no patch" (evaluated as
not submitted); ``""`` is an empty change.

``eval preds PREDS.json --resume RUN_DIR`` continues such a run (:func:`check_resumable`):
the same predictions, those without a result evaluated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentfleet.fleet.rundir import RunDir
from agentfleet.models import ModelSpec
from agentfleet.models.base import ModelStats

__all__ = [
    "PredictedModel",
    "Prediction",
    "PredictionsSpec",
    "check_resumable",
    "is_preds_run",
    "load_predictions",
]


@dataclass(frozen=True)
class Prediction:
    instance_id: str
    model: str
    patch: str | None


def _record(entry: Any, where: str) -> Prediction:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
    iid = entry.get("instance_id")
    if not isinstance(iid, str) or not iid:
        raise ValueError(f"{where}: no instance_id")
    patch = entry.get("model_patch")
    if patch is not None and not isinstance(patch, str):
        raise ValueError(f"{where} ({iid}): model_patch must be a string or null")
    model = entry.get("model_name_or_path") or ""
    return Prediction(iid, str(model), patch)


def load_predictions(path: Path) -> dict[str, Prediction]:
    """The predictions in ``path`` by instance id; ``ValueError`` naming the bad entry."""
    text = path.read_text()
    entries: list[tuple[str, Any]]
    if path.suffix == ".jsonl":
        entries = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    entries.append((f"{path.name} line {n}", json.loads(line)))
                except ValueError as exc:
                    raise ValueError(f"{path.name} line {n}: not JSON: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{path.name}: not JSON: {exc}") from None
        if isinstance(data, dict):
            entries = [(f"{path.name} [{k!r}]", v) for k, v in data.items()]
        elif isinstance(data, list):
            entries = [(f"{path.name} [{i}]", v) for i, v in enumerate(data)]
        else:
            raise ValueError(f"{path.name}: expected an object or a list of predictions")
    preds: dict[str, Prediction] = {}
    for where, entry in entries:
        pred = _record(entry, where)
        if pred.instance_id in preds:
            raise ValueError(f"{where}: {pred.instance_id} is predicted twice")
        preds[pred.instance_id] = pred
    if not preds:
        raise ValueError(f"{path.name}: no predictions")
    return preds


@dataclass
class PredictedModel:
    """Stands for the agent that made a prediction (its name in trajectories, preds.json)."""

    name: str
    stats: ModelStats = field(default_factory=ModelStats)


class PredictionsSpec(ModelSpec):
    """A run's model when its patches come from predictions: nothing to prepare or build."""

    def __init__(self, name: str) -> None:
        super().__init__(spec=f"preds:{name}" if name else "preds")

    def prepare(self) -> None:
        return None

    def validate(self) -> None:
        return None


def is_preds_run(config: dict[str, Any]) -> bool:
    """Whether a run's ``config.json`` is that of an ``eval preds`` run."""
    return str(config.get("model", "")).split(":", 1)[0] == "preds"


def _listed(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def check_resumable(
    run_dir: Path, saved: dict[str, Any], predictions: dict[str, Prediction]
) -> None:
    """Whether the run in ``run_dir`` (its saved ``config.json``) is an ``eval preds`` run
    to be continued with ``predictions``; ``ValueError`` saying why not: a run of
    ``agentfleet run``, or predictions that are not the run's (other tasks, or another
    patch for a task it has evaluated: two sets of predictions' scores in one run)."""
    if not is_preds_run(saved):
        raise ValueError(
            f"cannot resume {run_dir} with eval preds: `agentfleet run` made it (an agent's "
            f"run); continue it with `agentfleet run --resume {run_dir}`"
        )
    tasks = saved.get("tasks")
    if isinstance(tasks, list) and set(tasks) != set(predictions):
        extra = sorted(set(predictions) - set(tasks))
        lacking = sorted(set(tasks) - set(predictions))
        parts = [f"{len(extra)} the run has not ({_listed(extra)})"] if extra else []
        parts += [f"none for {len(lacking)} of its tasks ({_listed(lacking)})"] if lacking else []
        raise ValueError(
            f"cannot resume {run_dir}: these predictions are not the run's: "
            + "; ".join(parts)
            + " (evaluate them into another --run-dir)"
        )
    changed = sorted(
        iid
        for iid, rec in RunDir(run_dir).read_preds().items()
        if iid in predictions
        and isinstance(rec, dict)
        and (rec.get("model_patch") or "") != (predictions[iid].patch or "")
    )
    if changed:
        raise ValueError(
            f"cannot resume {run_dir}: the patch of {len(changed)} evaluated task(s) differs "
            f"from the run's ({_listed(changed)}): evaluate these predictions into another "
            "--run-dir"
        )
