"""What a server URL given by an operator must be before a client calls it."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["is_http_url"]


def is_http_url(url: str) -> bool:
    """An absolute http(s) URL with a host, and a port (if any) that is a number 0-65535."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range or not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
