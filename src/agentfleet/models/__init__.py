"""Models: the Model protocol, offline models, OpenAI-compatible clients, the mock LLM server."""

from agentfleet.models.base import (
    LimitReached,
    Message,
    Model,
    ModelError,
    ModelReply,
    ModelStats,
)
from agentfleet.models.factory import MODEL_SPECS, ModelSpec
from agentfleet.models.offline import SUBMIT_SENTINEL, OracleModel, ScriptedModel, oracle_replies

__all__ = [
    "MODEL_SPECS",
    "SUBMIT_SENTINEL",
    "LimitReached",
    "Message",
    "Model",
    "ModelError",
    "ModelReply",
    "ModelSpec",
    "ModelStats",
    "OracleModel",
    "ScriptedModel",
    "oracle_replies",
]
