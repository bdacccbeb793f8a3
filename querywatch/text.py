"""Pure: small text helpers shared by every output (terminal tables, summaries, Markdown).

>>> one_line("SELECT *\\n   FROM orders", 12)
'SELECT *...'
>>> md_escape("a | b")
'a \\\\| b'
"""

from __future__ import annotations


def one_line(text: str, width: int) -> str:
    """Whitespace collapsed to single spaces, cut to at most ``width`` characters with "..."."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3].rstrip() + "..."


def md_escape(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|")
