"""What a server URL given by an operator must be before a client calls it."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["is_http_url", "url_problem"]


def is_http_url(url: str) -> bool:
    """An absolute http(s) URL with a host, and a port (if any) that is a number 0-65535."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range or not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def url_problem(option: str, url: str | None) -> str | None:
    """Why ``url``, given as ``option``, is no server URL (:func:`is_http_url`); None if it
    is one or is unset."""
    if url is None or is_http_url(url):
        return None
    return f"{option} {url[:200]!r}: not an http(s) URL (e.g. http://host:port)"
