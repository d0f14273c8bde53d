"""reports.fit: the advisor's CLI, its ladder advice, its tables.md section, --measure on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reports.__main__ import main
from reports.fit import REFERENCE_DIR, AdvisorError, check_query, fit_section, run_advisor
from reports.frame import load_run


def test_bad_queries_name_every_problem_and_the_allowed_values(capsys) -> None:
    assert main(["fit", "--gpu", "t5", "--model", "llama-9b", "--batch", "0", "--seq", "2048"]) == 2
    err = capsys.readouterr().err
    assert "unknown --gpu 't5'; allowed: t4, " in err
    assert "unknown --model 'llama-9b'; allowed: " in err and "llama-3.1-8b" in err
    assert "--batch 0 must be >= 1" in err
    assert check_query("t4", "llama-3.1-8b", 4, 2048).name == "t4"


def test_runs_must_hold_results(tmp_path: Path) -> None:
    with pytest.raises(AdvisorError, match=r"no results\.jsonl"):
        run_advisor("t4", "llama-3.1-8b", 4, 2048, [tmp_path])


def test_advice_from_the_reference_runs_labels_predictions_and_shows_the_error(capsys) -> None:
    """The committed runs hold the T4 ladder measured on the H200 (8-bit Adam, each OOM rerun
    uncapped): the advisor answers the lesson's T4 question as those rows did."""
    assert main(["fit", "--gpu", "t4", "--model", "llama-3.1-8b", "--batch", "4", "--seq", "2048"]) == 0
    out = capsys.readouterr().out
    assert "held-out error (leave one configuration out)" in out and "predicted" in out
    assert "**does not fit as set; the first ladder step that fits is '4: + gradient checkpointing'" in out
    # Issue 11's acceptance over every committed run (the multigpu-t4x2 one-card rows now trained
    # their case's batch on one visible GPU: no row is read at another batch).
    assert "of the measured device peak; meets the target (median <= 5%, max <= 10%)" in out
    assert "trained 8 rows a step" not in out


def test_without_rows_of_the_ladders_configuration_the_advice_is_undecided() -> None:
    """The smoke run measured neither the ladder's weights (8B, fp16) nor its optimizer (8-bit
    Adam): said, not guessed."""
    report = run_advisor("t4", "llama-3.1-8b", 4, 2048, [REFERENCE_DIR / "h200-smoke"])
    assert "**undecided: step '0: the setting' is not predictable" in report


def test_the_ladder_is_decided_once_its_optimizer_is_measured(tmp_path: Path) -> None:
    """A run whose rows measured 8-bit Adam: the advisor names the first step that fits."""
    run = tmp_path / "run"
    run.mkdir()
    source = (REFERENCE_DIR / "engines-8b-h200" / "results.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in source if line]
    extra = []
    for row in rows:
        case = row["case"]
        if case.get("engine") == "trainer" and case["quant_type"] == "nf4":
            eight_bit = dict(row, case=dict(case, optimizer="adamw_8bit", compute_dtype="fp16"))
            eight_bit.update(
                case_id=row["case_id"] + "-8bit", optimizer_state_bytes=row["trainable_params"] * 2
            )
            extra.append(eight_bit)
    (run / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows + extra) + "\n")
    report = run_advisor("h200", "llama-3.1-8b", 4, 2048, [run, REFERENCE_DIR])
    assert "**fits as set (predicted" in report
    t4 = run_advisor("t4", "llama-3.1-8b", 4, 2048, [run, REFERENCE_DIR])
    assert "**does not fit as set; the first ladder step that fits is '4: + gradient checkpointing'" in t4


def test_tables_section_reports_the_held_out_error() -> None:
    text = fit_section(load_run(REFERENCE_DIR / "t4-default-on-h200"))
    assert text.startswith("## Fit advisor: held-out error on this run's rows")
    assert "median" in text and "| llama-3.2-3b-nf4-dq-fp16-b1-s512-w2m8-trainer | measured |" in text
    # The H200 run of the t4 tier (session 4): within the target on its own rows.
    assert "meets the target (median <= 5%, max <= 10%)" in text


@pytest.mark.slow
def test_measure_runs_the_tiny_ladder_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "measured"
    report = run_advisor("cpu", "tiny", 4, 256, [REFERENCE_DIR / "h200-smoke"], measure_out=out)
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in results] == ["ok"] * 5
    assert [r["case"]["batch_size"] for r in results] == [4, 2, 1, 1, 1]
    assert "measured status" in report and report.count("| ok |") == 5
