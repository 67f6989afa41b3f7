"""Build a model per agent from a spec: oracle, scripted:FILE, openai/NAME, openrouter/NAME."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentfleet.models.base import Model
from agentfleet.models.offline import OracleModel, ScriptedModel
from agentfleet.models.pricing import RunBudget
from agentfleet.tasks import Task

MODEL_SPECS = "oracle | scripted:FILE.yaml | openai/NAME (with --model-url) | openrouter/NAME"


@dataclass
class ModelSpec:
    spec: str
    url: str | None = None
    delay_s: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)
    _replies: list[str] | None = None

    def prepare(self) -> None:
        """Validate, and read any file the model needs (sync: call outside the event loop)."""
        self.validate()
        if self.spec.startswith("scripted:") and self._replies is None:
            self._replies = ScriptedModel.from_yaml(self.spec.split(":", 1)[1]).replies

    def validate(self) -> None:
        """Fail early (before any sandbox exists) on a spec that cannot work."""
        kind = self.spec.split(":", 1)[0].split("/", 1)[0]
        if kind not in {"oracle", "scripted", "openai", "openrouter"}:
            raise ValueError(f"unknown model {self.spec!r}; expected {MODEL_SPECS}")
        if kind == "openai" and not self.url:
            raise ValueError("--model openai/NAME needs --model-url (an OpenAI-compatible /v1 URL)")
        if kind in {"openai", "openrouter"} and "/" not in self.spec:
            raise ValueError(f"model {self.spec!r} needs a name after the slash")
        if kind == "scripted" and ":" not in self.spec:
            raise ValueError("--model scripted:FILE.yaml needs the file of replies")

    def build(
        self, task: Task, *, cost_limit: float | None = None, budget: RunBudget | None = None
    ) -> Model:
        """A model for ``task``. ``cost_limit`` (USD, this model) and ``budget`` (the run's,
        shared) apply to models that cost money; ``options`` given to the spec win."""
        self.validate()
        if self.spec == "oracle":
            return OracleModel(task, delay_s=self.delay_s)
        if self.spec.startswith("scripted:"):
            if self._replies is None:
                raise RuntimeError(
                    "ModelSpec.prepare() must run before build() for scripted models"
                )
            return ScriptedModel(self._replies, delay_s=self.delay_s, name=self.spec)
        provider, name = self.spec.split("/", 1)
        options: dict[str, Any] = {"cost_limit": cost_limit, "budget": budget, **self.options}
        if provider == "openrouter":
            from agentfleet.models.openai_chat import OpenRouterModel

            kw = {"base_url": self.url} if self.url else {}
            return OpenRouterModel(name, **kw, **options)
        from agentfleet.models.openai_chat import OpenAIChatModel

        assert self.url is not None
        return OpenAIChatModel(name, self.url, **options)
