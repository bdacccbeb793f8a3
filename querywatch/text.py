"""Pure: small text helpers shared by every output (terminal tables, summaries, Markdown).

>>> one_line("SELECT *\\n   FROM orders", 12)
'SELECT *...'
>>> md_escape("a | b")
'a \\\\| b'
>>> figure(40.0), figure(0.25), figure(0.004), figure(0.0456), figure(0.0)
('40.0', '0.2', '0.004', '0.046', '0.0')
"""

from __future__ import annotations

import math


def one_line(text: str, width: int) -> str:
    """Whitespace collapsed to single spaces, cut to at most ``width`` characters with "..."."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3].rstrip() + "..."


def md_escape(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def figure(value: float) -> str:
    """A measured figure (a mean in ms, calls/s, a factor) with one decimal, or two significant
    digits below 0.1, so that small values stay comparable: 0.004, not 0.0."""
    if value == 0 or not math.isfinite(value) or abs(value) >= 0.1:
        return f"{value:.1f}"
    digits = 1 - math.floor(math.log10(abs(value)))
    return f"{value:.{digits}f}".rstrip("0")
