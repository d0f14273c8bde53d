"""reports.markdown: the one table writer of claims.md, tables.md and baseline-diff.md."""

from __future__ import annotations

import pytest

from reports.markdown import md_cell, md_table


def test_md_table_escapes_pipes_and_flattens_line_breaks():
    text = md_table(("a", "b|c"), [("x|y", "line1\nline2\r\nline3"), (None, 3)])
    assert text.splitlines() == [
        "| a | b\\|c |",
        "|---|---|",
        "| x\\|y | line1 line2 line3 |",
        "|  | 3 |",
    ]
    assert md_cell(1.5) == "1.5"


def test_md_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="2 columns"):
        md_table(("a", "b"), [("only one",)])


def test_baseline_diff_tables_use_the_same_writer():
    from reports.gate import _table

    rows = [["a|b", "two\nlines"]]
    assert _table(["x", "y"], rows) == md_table(["x", "y"], rows)
    assert _table(["x", "y"], []) == "(none)"
