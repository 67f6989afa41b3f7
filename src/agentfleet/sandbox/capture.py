"""Output capture: a command's output kept head + tail in bounded memory, for every backend.

:class:`OutputCapture` keeps at most ``limit`` characters (half from the start, half from the
end, a marker between them when something was dropped); :func:`exec_result` turns it into
the exec's answer.
"""

from __future__ import annotations

from agentfleet.sandbox.base import ExecResult

__all__ = ["OutputCapture", "exec_result"]


class OutputCapture:
    """Keeps the head and the tail of a stream in bounded memory.

    ``limit`` counts characters of the final text: at most ``limit // 2`` from the start and
    ``limit - limit // 2`` from the end, with a marker between them when something was dropped.
    Bytes are buffered (4 bytes per kept character at most, UTF-8's worst case), so memory stays
    bounded whatever the command prints.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.head_chars = self.limit // 2
        self.tail_chars = self.limit - self.head_chars
        self._head_cap = 4 * self.head_chars
        self._tail_cap = 4 * self.tail_chars
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self._dropped = False  # bytes went neither to head nor tail

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self._head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if not data:
            return
        if len(data) >= self._tail_cap:
            if self.tail or len(data) > self._tail_cap:
                self._dropped = True
            keep = data[len(data) - self._tail_cap :] if self._tail_cap else b""
            self.tail = bytearray(keep)
            return
        self.tail += data
        excess = len(self.tail) - self._tail_cap
        if excess > 0:
            del self.tail[:excess]
            self._dropped = True

    def result(self) -> tuple[str, bool]:
        """The kept text and whether anything was left out."""
        if not self._dropped:
            text = (self.head + self.tail).decode("utf-8", "replace")
            if len(text) <= self.limit:
                return text, False
            head, tail = text[: self.head_chars], text[len(text) - self.tail_chars :]
        else:
            head = self.head.decode("utf-8", "replace")[: self.head_chars]
            tail_text = self.tail.decode("utf-8", "replace")
            tail = tail_text[len(tail_text) - self.tail_chars :] if self.tail_chars else ""
        omitted = max(0, self.total - len(head.encode()) - len(tail.encode()))
        marker = f"\n... [agentfleet: output truncated, {omitted} bytes omitted] ...\n"
        return head + marker + tail, True


def exec_result(
    capture: OutputCapture,
    returncode: int | None,
    *,
    timed_out: bool,
    timeout: float,
    elapsed: float,
) -> ExecResult:
    """The answer of a finished exec: the kept output, ``returncode`` (``None``, no exit
    status seen: -9), or 124 and a closing line when it ``timed_out``."""
    output, truncated = capture.result()
    if timed_out:
        returncode = 124
        output += f"\n[agentfleet: command timed out after {timeout:g} s and was killed]\n"
    return ExecResult(
        output=output,
        returncode=-9 if returncode is None else returncode,
        truncated=truncated,
        timed_out=timed_out,
        duration_s=round(elapsed, 4),
    )
