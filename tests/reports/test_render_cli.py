"""reports.render and `python -m reports render`: the run folder's reports, and the exit codes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reports.__main__ import EXIT_OK, EXIT_USAGE, main
from reports.claims import CLAIMS, claim_verdict, evaluate_all
from reports.markdown import MAX_LINE_CHARS, md_table
from reports.render import render_claims, render_run
from reports.run.frame import RunFolderError, check_run_dir
from reports.tables.lesson import render_tables

REPO = Path(__file__).resolve().parents[2]
VERDICTS = ("holds", "refuted", "inconclusive", "not run")
_TALLY_WORD = {"holds": "hold"}  # "6 hold" in the tally line


def overview_rows(claims_md: str) -> list[list[str]]:
    """The cells of the first table of claims.md: one row per claim (id, verdict, decided by)."""
    lines = claims_md.splitlines()
    start = lines.index("| Claim | Verdict | Decided by (measured, [condition]) |")
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("| "):
            break
        rows.append(re.split(r"(?<!\\) \| ", line.strip()[2:-2]))
    return rows


def summary_and_table_counts(claims_md: str) -> tuple[dict[str, int], dict[str, int]]:
    """Claims per verdict as claims.md's tally line states them, and as its overview rows show them."""
    line = next(x for x in claims_md.splitlines() if re.match(r"^\*\*\d+ claims: ", x))
    summary = {v: int(re.search(rf"(\d+) {_TALLY_WORD.get(v, v)}\b", line).group(1)) for v in VERDICTS}
    cells = [re.match(r"\*\*(.+?)\*\*", row[1]).group(1) for row in overview_rows(claims_md)]
    table = {v: cells.count(v) for v in VERDICTS}
    return summary, table


def test_render_run_writes_claims_tables_and_plots(synthetic_run_dir):
    written = render_run(synthetic_run_dir)
    assert set(written) == {
        "claims",
        "tables",
        "wall_time",
        "peak_memory_vs_seq",
        "tokens_per_s",
        "loss_curves",
        "perplexity",
    }
    assert all(path.exists() and path.parent.is_relative_to(synthetic_run_dir) for path in written.values())
    summary, table = summary_and_table_counts(written["claims"].read_text())
    assert summary == table and sum(table.values()) == len(CLAIMS)
    assert written["tables"].read_text().startswith("# The lesson's tables, measured")
    assert written["wall_time"].read_text().startswith("# Where the wall time went")


def test_the_summary_check_catches_a_count_that_disagrees_with_the_table(synthetic_run):
    text = render_claims(synthetic_run)
    held = next(row[0] for row in overview_rows(text) if row[1].startswith("**holds**"))
    broken = text.replace(f"| {held} | **holds**", f"| {held} | **refuted**", 1)  # one row, not the tally
    summary, table = summary_and_table_counts(broken)
    assert summary != table
    assert table["refuted"] == summary["refuted"] + 1


def test_claims_md_has_one_line_per_claim_and_counts_claims_not_evaluations(synthetic_run):
    text = render_claims(synthetic_run)
    results = evaluate_all(synthetic_run)
    rows = overview_rows(text)
    not_run = {row[0] for row in rows if row[1].startswith("**not run**")}
    lesson_order = [c.id for c in CLAIMS]
    assert [row[0] for row in rows] == sorted(lesson_order, key=lambda claim_id: claim_id in not_run)
    assert len(rows) == len(CLAIMS) < len(results)  # claims, each once; several have several evaluations
    tally = next(x for x in text.splitlines() if re.match(r"^\*\*\d+ claims: ", x))
    assert tally.startswith(f"**{len(CLAIMS)} claims: ") and f"({len(results)} evaluations;" in tally
    # Every claim's verdict is the rule's (reports.claims.claim_verdict) over its evaluations.
    for claim_id, verdict_cell, _ in rows:
        verdicts = [e for c, e in results if c.id == claim_id]
        assert verdict_cell.startswith(f"**{claim_verdict(verdicts).value.replace('_', ' ')}**"), claim_id
    # Not-run claims come last, after every decided one.
    kinds = [row[1].startswith("**not run**") for row in rows]
    assert kinds == sorted(kinds) and any(kinds) and not all(kinds)
    # The overview is the first screen: it starts within the first 10 lines.
    assert text.splitlines().index("| Claim | Verdict | Decided by (measured, [condition]) |") < 10


def test_claims_md_evidence_lists_every_evaluation_with_its_reasons(synthetic_run):
    text = render_claims(synthetic_run)
    results = evaluate_all(synthetic_run)
    evidence = text[text.index("## Evidence") :]
    items = [
        line
        for line in evidence.splitlines()
        if re.match(r"^- \*\*(holds|refuted|inconclusive|not run)\*\*", line)
    ]
    assert len(items) == len(results)
    assert all(f"### {c.id}: " in evidence for c in CLAIMS)
    assert "- **refuted** (fp4): fp4: " in evidence
    assert "  - the measurements support: bitsandbytes' FP4 levels are not equally spaced" in evidence
    assert "- **not run** (FP32)" in evidence and "  - why: no 7-8B unquantized fp32" in evidence
    assert "(+10 more)" in evidence  # long case id lists are shortened


def test_no_line_of_claims_md_or_tables_md_is_wider_than_the_limit(synthetic_run):
    for text in (render_claims(synthetic_run), render_tables(synthetic_run)):
        widths = [len(line) for line in text.splitlines()]
        assert max(widths) <= MAX_LINE_CHARS, max(widths)
    # What the limit guards against: the old writer's claims table put every evaluation on a line.
    wide = md_table(
        ("Claim", "Evidence"), [(c.id, ", ".join(e.evidence)) for c, e in evaluate_all(synthetic_run)]
    )
    assert max(len(line) for line in wide.splitlines()) > MAX_LINE_CHARS


def test_claims_md_names_each_verdicts_points_and_each_claims_lesson_settings(synthetic_run):
    """In each claim's evidence (not as a wide column): the lesson's settings it is judged at, and
    each evaluation's points of this run."""
    text = render_claims(synthetic_run)
    blocks = {block.split(":", 1)[0]: block for block in text.split("\n### ")[1:]}

    def words(block: str) -> str:  # wrapped lines (fit_width) read as one
        return " ".join(block.split())

    activations = words(blocks["overhead-activations"])
    assert "- judged at (this run's points): llama-3.2-3b b1 s512, b1 s2048, b4 s512, b4 s2048" in activations
    for claim in CLAIMS:
        assert f"Judged at (the lesson's settings): {words(claim.judged_at)}." in words(blocks[claim.id]), (
            claim.id
        )
    header = next(x for x in text.splitlines() if x.startswith("| Claim |"))
    assert "Judged at" not in header  # the overview stays one short line per claim


def test_check_run_dir_names_the_problem(tmp_path):
    with pytest.raises(RunFolderError, match="does not exist"):
        check_run_dir(tmp_path / "missing")
    with pytest.raises(RunFolderError, match=r"no results\.jsonl"):
        check_run_dir(tmp_path)


def test_cli_exit_codes(synthetic_run_dir, tmp_path, capsys):
    assert main(["render", str(synthetic_run_dir)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"claims: {synthetic_run_dir / 'claims.md'}" in out
    assert main(["render", str(tmp_path / "missing")]) == EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err
    assert main(["render", str(tmp_path)]) == EXIT_USAGE
    assert "no results.jsonl" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main([])
    assert usage.value.code == EXIT_USAGE


def test_python_dash_m_reports_render(synthetic_run_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    ok = subprocess.run(
        [sys.executable, "-m", "reports", "render", str(synthetic_run_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert (synthetic_run_dir / "plots" / "tokens_per_s.png").exists()
    missing = subprocess.run(
        [sys.executable, "-m", "reports", "render", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr
