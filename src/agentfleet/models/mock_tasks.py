"""The mock LLM's task recognition: which task a conversation is about, and the oracle's
replies for it."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from agentfleet.models.base import ModelError
from agentfleet.models.offline import SUBMIT_SENTINEL, bash_reply, oracle_replies

log = logging.getLogger("agentfleet.models.mock_server")

PREFIX_CHARS = 80
UNKNOWN_TASK_REPLY = bash_reply(
    "I do not recognise this task, so I submit without changing anything.",
    f"echo {SUBMIT_SENTINEL}",
)


def _normalise(text: str) -> str:
    return " ".join(text.split())


@dataclass
class _KnownTask:
    id: str
    prompt: str  # normalised
    replies: list[str]
    id_pattern: re.Pattern[str]


@dataclass
class TaskIndex:
    """The tasks of a dataset and the oracle's replies for each."""

    dataset: str | None = None
    tasks: list[_KnownTask] = field(default_factory=list)

    @classmethod
    def load(cls, dataset: str | None) -> TaskIndex:
        """Read the dataset and every reference patch (blocking: run in a thread)."""
        if not dataset:
            return cls(None, [])
        from agentfleet.tasks import load_dataset

        ds = load_dataset(dataset)
        known = []
        for task in ds.tasks():
            try:
                replies = oracle_replies(task)
            except ModelError as exc:
                log.warning("mock LLM: %s; it will only be submitted", exc)
                replies = [UNKNOWN_TASK_REPLY]
            pattern = re.compile(rf"(?<![\w-]){re.escape(task.id)}(?![\w-])")
            known.append(_KnownTask(task.id, _normalise(task.prompt), replies, pattern))
        return cls(ds.name, known)

    def recognise(self, text: str) -> _KnownTask | None:
        """The task whose prompt (whole, else its first 80 chars), else id, is in ``text``."""
        text = _normalise(text)
        best: tuple[int, _KnownTask] | None = None
        for task in self.tasks:
            if not task.prompt:
                continue
            if task.prompt in text:
                score = 2 * len(task.prompt)
            elif task.prompt[:PREFIX_CHARS] in text:
                score = len(task.prompt[:PREFIX_CHARS])
            else:
                continue
            if best is None or score > best[0]:
                best = (score, task)
        if best is not None:
            return best[1]
        by_id = [t for t in self.tasks if t.id_pattern.search(text)]
        return max(by_id, key=lambda t: len(t.id)) if by_id else None
