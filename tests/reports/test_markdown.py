"""reports.markdown: the one table writer of claims.md, tables.md and baseline-diff.md."""

from __future__ import annotations

import pytest

from reports.markdown import fit_width, md_cell, md_table, wrap_line


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
    from reports.gate.verdict import _table

    rows = [["a|b", "two\nlines"]]
    assert _table(["x", "y"], rows) == md_table(["x", "y"], rows)
    assert _table(["x", "y"], []) == "(none)"


def test_fit_width_keeps_a_table_that_fits_and_lists_one_that_does_not():
    narrow = md_table(("a", "b"), [("x", "y")])
    assert fit_width(narrow, width=40) == narrow
    wide = md_table(("Precision", "Measured"), [("FP32", "word " * 20), ("INT8|x", "short")])
    listed = fit_width(wide, width=40)
    first, cell, continued = listed.splitlines()[:3]
    assert (
        first == "- **FP32**" and cell.startswith("  - *Measured*: word") and continued.startswith("    word")
    )
    assert all(len(line) <= 40 for line in listed.splitlines())
    assert "- **INT8\\|x**" in listed and "  - *Measured*: short" in listed  # the escaped pipe stays one cell
    assert " ".join(listed.split()).count("word") == 20  # nothing cut


def test_fit_width_wraps_prose_and_list_items_under_their_text_and_leaves_headings_and_code():
    text = "\n".join(["# " + "title " * 20, "- item " + "w " * 30, "para " * 15, "```", "code " * 15, "```"])
    fitted = fit_width(text, width=40).splitlines()
    assert fitted[0] == "# " + "title " * 20  # a heading is one line
    item = [line for line in fitted if line.startswith(("- item", "  w"))]
    assert len(item) > 1 and all(line.startswith("  ") for line in item[1:])  # continuation indented
    assert "code " * 15 in fitted  # a code block is kept as it is
    assert max(len(line) for line in fitted if line.startswith(("-", " ", "para"))) <= 40


def test_wrap_line_never_splits_a_word():
    word = "x" * 60
    assert wrap_line(f"- {word} y", width=40) == [f"- {word}", "  y"]
