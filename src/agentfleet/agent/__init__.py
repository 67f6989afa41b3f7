"""LightAgent: the bash-only agent loop."""

from agentfleet.agent.light import AgentConfig, AgentResult, LightAgent, parse_action

__all__ = ["AgentConfig", "AgentResult", "LightAgent", "parse_action"]
