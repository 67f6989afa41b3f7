"""Reading a YAML file that a user wrote (task.yaml, dataset.yaml, an agent config, a
scripted model's replies): any failure is one line naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agentfleet.tasks.oneline import not_utf8

__all__ = ["YamlFileError", "read_yaml", "yaml_problem"]


class YamlFileError(ValueError):
    """A YAML file that cannot be read or parsed; the message is ``PATH: what is wrong``."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A parser's error on one line: what, and where (PyYAML's own text spans lines)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return " ".join(str(exc).split())
    parts = [
        f"{text} (line {mark.line + 1}, column {mark.column + 1})" if mark else text
        for text, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark))
        if text
    ]
    return ": ".join(parts) or "invalid YAML"


def read_yaml(path: str | Path) -> Any:
    """The document in ``path`` (blocking); :class:`YamlFileError` if it cannot be read,
    is not UTF-8 or is not YAML."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise YamlFileError(path, not_utf8(exc)) from None
    except OSError as exc:
        raise YamlFileError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise YamlFileError(path, f"not valid YAML: {yaml_problem(exc)}") from None
