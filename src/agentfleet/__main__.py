"""``python -m agentfleet``: the ``agentfleet`` command."""

from agentfleet.cli import app

app(prog_name="agentfleet")
