"""Fixed-width plain-text tables."""

from __future__ import annotations


def format_cell(value, width):
    """Format one cell to exactly ``width`` characters.

    ``None`` is blank, ints are right-aligned, floats right-aligned with two
    decimals, anything else left-aligned; too-long values are cut and end in ``~``.
    """
    if value is None:
        text, right = "", False
    elif isinstance(value, bool):
        text, right = ("yes" if value else "no"), False
    elif isinstance(value, int):
        text, right = str(value), True
    elif isinstance(value, float):
        text, right = f"{value:.2f}", True
    else:
        text, right = str(value), False
    if len(text) > width:
        text = text[: width - 1] + "~"
    return text.rjust(width) if right else text.ljust(width)


class TableWriter:
    """Accumulates a table and returns it with :meth:`getvalue`."""

    def __init__(self, columns, widths=None, sep=" | "):
        self.columns = list(columns)
        if widths is None:
            widths = [max(8, len(c)) for c in self.columns]
        if len(widths) != len(self.columns):
            raise ValueError("one width per column is required")
        self.widths = list(widths)
        self.sep = sep
        self.rows = 0
        self._text = ""

    def _line(self, cells):
        return self.sep.join(format_cell(v, w) for v, w in zip(cells, self.widths)).rstrip() + "\n"

    def header(self):
        self._text += self._line(self.columns)
        self._text += "-" * (sum(self.widths) + len(self.sep) * (len(self.widths) - 1)) + "\n"

    def row(self, values):
        values = list(values)
        if len(values) != len(self.columns):
            raise ValueError(f"expected {len(self.columns)} values, got {len(values)}")
        self._text += self._line(values)
        self.rows += 1

    def footer(self, text):
        self._text += "=" * 3 + " " + text + "\n"

    def getvalue(self):
        return self._text


def render_table(columns, rows, widths=None, footer=None):
    """Render a whole table in one call."""
    writer = TableWriter(columns, widths)
    writer.header()
    for values in rows:
        writer.row(values)
    if footer is not None:
        writer.footer(footer)
    return writer.getvalue()
