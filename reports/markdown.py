"""Markdown tables and lists, the one writer of claims.md, tables.md and baseline-diff.md.

A cell is one line of text: `|` is escaped and line breaks are flattened to spaces, so no value
can split a row or a cell.

Width: no line of claims.md or tables.md is longer than `MAX_LINE_CHARS` (`fit_width`). A table
with a row that would be is written as a list instead, one item per row and one sub-item per cell
(a row of long sentences reads better as a list than as a line scrolled sideways); a longer line
of prose or of a list item is wrapped, its continuation indented under it (markdown joins them).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

MAX_LINE_CHARS = 200
"""The longest line claims.md and tables.md have (`fit_width`)."""
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_CELL_SEPARATOR = re.compile(r"(?<!\\) \| ")  # " | " between cells; an escaped "\|" is inside one
_LIST_ITEM = re.compile(r"^(\s*)([-*] |\d+\. )")


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


def wrap_line(line: str, width: int = MAX_LINE_CHARS) -> list[str]:
    """`line` as lines of at most `width` characters where its words allow: a list item's
    continuation is indented under its text, prose keeps its own indentation. Words are never
    split (a single word longer than `width` stays whole)."""
    if len(line) <= width:
        return [line]
    item = _LIST_ITEM.match(line)
    # The indentation, with a list item's marker: the text starts after it, so does its continuation.
    lead = line[: item.end()] if item else line[: len(line) - len(line.lstrip())]
    follow = " " * len(lead) if item else lead
    return textwrap.wrap(
        line[len(lead) :],
        width=width,
        initial_indent=lead,
        subsequent_indent=follow,
        break_long_words=False,
        break_on_hyphens=False,
    )


def md_records(headers: Sequence[str], rows: Iterable[Sequence[str]], width: int = MAX_LINE_CHARS) -> str:
    """A table's rows as a list: the row's first cell as the item, each other cell a sub-item
    "*header*: cell" (cells already markdown text, as `md_cell` writes them); wrapped to `width`."""
    lines: list[str] = []
    for row in rows:
        head, *rest = row
        lines += wrap_line(f"- **{head}**" if head else "-", width)
        for header, cell in zip(headers[1:], rest):
            lines += wrap_line(f"  - *{header}*: {cell}", width)
    return "\n".join(lines)


def _split_row(line: str) -> list[str]:
    """The cells of one `md_table` row (escapes kept: the cells stay markdown text)."""
    return _CELL_SEPARATOR.split(line.strip()[2:-2])


def _is_table_start(lines: Sequence[str], i: int) -> bool:
    separator = lines[i + 1] if i + 1 < len(lines) else ""
    return lines[i].startswith("| ") and re.fullmatch(r"\|(---\|)+", separator) is not None


def fit_width(text: str, width: int = MAX_LINE_CHARS) -> str:
    """`text` (markdown written by this module's writers) with no line over `width` characters
    where words allow: a table with a longer line becomes `md_records`; longer prose and list
    lines are wrapped (`wrap_line`). Tables that fit, headings and code blocks are kept as they are."""
    lines = text.split("\n")
    out: list[str] = []
    i, in_code = 0, False
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and _is_table_start(lines, i):
            end = i + 2
            while end < len(lines) and lines[end].startswith("| "):
                end += 1
            block = lines[i:end]
            if max(len(x) for x in block) <= width:
                out += block
            else:
                headers = _split_row(block[0])
                out += md_records(headers, [_split_row(x) for x in block[2:]], width).split("\n")
            i = end
            continue
        out += [line] if in_code or line.startswith("#") else wrap_line(line, width)
        i += 1
    return "\n".join(out)
