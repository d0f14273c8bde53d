"""Markdown tables, the one writer of claims.md, tables.md and baseline-diff.md.

A cell is one line of text: `|` is escaped and line breaks are flattened to spaces, so no value
can split a row or a cell.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def md_cell(value: Any) -> str:
    """One markdown table cell: `|` escaped, line breaks as spaces, None as empty."""
    if value is None:
        return ""
    return _LINE_BREAK.sub(" ", str(value).replace("|", "\\|"))


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table (pandas' to_markdown needs tabulate, not installed).

    Raises ValueError for a row whose cell count differs from the headers'.
    """
    lines = ["| " + " | ".join(md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [md_cell(v) for v in row]
        if len(cells) != len(headers):
            raise ValueError(f"row has {len(cells)} cells, the table {len(headers)} columns: {row!r}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
