"""reports.render and `python -m reports render`: the run folder's reports, and the exit codes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reports.__main__ import EXIT_OK, EXIT_USAGE, main
from reports.claims import CLAIMS, evaluate_all
from reports.render import RunFolderError, check_run_dir, render_claims, render_run

REPO = Path(__file__).resolve().parents[2]
VERDICTS = ("holds", "refuted", "inconclusive", "not run")


def summary_and_table_counts(claims_md: str) -> tuple[dict[str, int], dict[str, int]]:
    """Verdict counts as claims.md's summary line states them, and as its table's rows show them."""
    line = next(x for x in claims_md.splitlines() if x.startswith("**holds "))
    summary = {v: int(re.search(rf"{v} (\d+)", line).group(1)) for v in VERDICTS}
    cells = [row.split(" | ")[3] for row in claims_md.splitlines() if row.startswith("| ") and " | **" in row]
    table = {v: cells.count(f"**{v}**") for v in VERDICTS}
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
    assert summary == table and sum(table.values()) > 0
    assert written["tables"].read_text().startswith("# The lesson's tables, measured")
    assert written["wall_time"].read_text().startswith("# Where the wall time went")


def test_the_summary_check_catches_a_count_that_disagrees_with_the_table(synthetic_run):
    text = render_claims(synthetic_run)
    broken = text.replace("| **holds** |", "| **refuted** |", 1)  # one row changed, summary not
    summary, table = summary_and_table_counts(broken)
    assert summary != table
    assert table["refuted"] == summary["refuted"] + 1


def test_claims_md_lists_every_evaluation_with_its_reasons(synthetic_run):
    text = render_claims(synthetic_run)
    results = evaluate_all(synthetic_run)
    table_rows = [
        line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| Claim |")
    ]
    assert len(table_rows) == len(results)
    assert {row.split(" | ")[0].lstrip("| ") for row in table_rows} == {c.id for c in CLAIMS}
    assert "## Refuted: what the measurements support" in text
    assert "- **fp4-uniform** (fp4): bitsandbytes' FP4 levels are not equally spaced" in text
    assert "## Not run and inconclusive: why" in text
    assert "- **mem7b-weights** (FP32), not run: no 7-8B unquantized fp32" in text
    assert "(+14 more)" in text  # long evidence lists are shortened


def test_claims_md_names_each_verdicts_points_and_each_claims_lesson_settings(synthetic_run):
    text = render_claims(synthetic_run)
    header = next(x for x in text.splitlines() if x.startswith("| Claim |"))
    assert "| Judged at (this run's points) |" in header
    activations = next(x for x in text.splitlines() if x.startswith("| overhead-activations |"))
    assert "| llama-3.2-3b b1 s512, b1 s2048, b4 s512, b4 s2048 |" in activations
    settings = text.split("## Judged at: the lesson's settings each claim is checked at", 1)[1]
    for claim in CLAIMS:
        assert f"- **{claim.id}**: {claim.judged_at}" in settings, claim.id


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
