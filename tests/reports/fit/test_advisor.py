"""reports.fit.advisor: the advisor's question (every Case field it takes, refused when bad), its headline
(the setting as given, then the smallest change that fits), its tables.md section."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from qlora_core.cases.case import COMPUTE_DTYPES, OPTIMIZERS, QUANT_TYPES, Case
from qlora_core.cases.gpus import PROFILE_NAMES, get_profile
from reports.__main__ import build_parser, main
from reports.fit.advisor import REFERENCE_DIR, changes, fit_section, measured_figures, run_advisor
from reports.fit.query import MODEL_NAMES, AdvisorError
from reports.run.frame import load_run

MEASURED_LADDER = REFERENCE_DIR / "fit-advisor" / "measure" / "results.jsonl"
EIGHT_B = ["fit", "--gpu", "t4", "--model", "llama-3.1-8b"]
HEADLINE = re.compile(r"^\*\*(.*)\*\*$", re.MULTILINE)


def _headline(out: str) -> str:
    match = HEADLINE.search(out)
    assert match is not None, out
    return match.group(1)


def _advise(capsys, *args: str) -> str:
    assert main([*EIGHT_B, *args]) == 0
    return capsys.readouterr().out


def test_bad_values_are_refused_at_once_naming_the_allowed_values(capsys, tmp_path: Path) -> None:
    """Every bad value in one message, with the Case's allowed values, before any run folder is
    read (--runs names a folder that does not exist: not reached)."""
    bad = ["--gpu", "t5", "--model", "llama-9b", "--batch-size", "0", "--seq-len", "2048"]
    bad += ["--optimizer", "sgd", "--compute-dtype", "fp8", "--quant-type", "nf3"]
    bad += ["--gradient-checkpointing", "maybe", "--double-quant", "yes", "--grad-accum", "0"]
    assert main(["fit", *bad, "--runs", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "absent" not in err
    assert f"--gpu 't5': allowed: {', '.join(PROFILE_NAMES)}" in err
    assert f"--model 'llama-9b': allowed: {', '.join(MODEL_NAMES)}" in err
    assert f"--optimizer 'sgd': allowed: {', '.join(OPTIMIZERS)}" in err
    assert f"--compute-dtype 'fp8': allowed: {', '.join(COMPUTE_DTYPES)}" in err
    assert f"--quant-type 'nf3': allowed: {', '.join(QUANT_TYPES)}" in err
    assert "--gradient-checkpointing 'maybe': allowed: on, off" in err
    assert "--double-quant 'yes': allowed: on, off" in err
    assert "--batch-size 0 must be >= 1" in err and "--grad-accum 0 must be >= 1" in err
    # A cross-field rule of the Case, in its own words.
    assert (
        main(
            [
                *EIGHT_B,
                "--batch-size",
                "1",
                "--seq-len",
                "512",
                "--quant-type",
                "none",
                "--compute-dtype",
                "fp32",
            ]
        )
        == 2
    )
    assert "compute_dtype='fp32' with quant_type='none'" in capsys.readouterr().err


def test_help_lists_the_models_and_the_allowed_values() -> None:
    fit = next(
        action.choices["fit"] for action in build_parser()._actions if getattr(action, "choices", None)
    )
    text = " ".join(fit.format_help().split())
    for name in (*MODEL_NAMES, *OPTIMIZERS, *COMPUTE_DTYPES, *QUANT_TYPES):
        assert name in text, name
    assert "--gradient-checkpointing on|off" in text and "--show-held-out" in text


def test_runs_must_hold_results(tmp_path: Path) -> None:
    with pytest.raises(AdvisorError, match=r"no results\.jsonl"):
        run_advisor(get_profile("t4"), Case("llama-3.1-8b"), [tmp_path])


def _measured_8b_b1_s1024_checkpointed() -> float:
    """The committed measurement: 8B, b1 s1024 (grad accumulation 4), checkpointing, 8-bit AdamW,
    fp16, Trainer, under the T4's cap on an H200 (device peak above the device's prior use)."""
    rows = [json.loads(line) for line in MEASURED_LADDER.read_text().splitlines() if line]
    (row,) = [
        r for r in rows if r["case_id"] == "llama-3.1-8b-nf4-dq-fp16-b1-s1024-ga4-adamw8bit-w2m4-trainer"
    ]
    status, peak = measured_figures(row)
    assert status == "ok" and peak is not None
    return peak


def test_8b_b1_s1024_checkpointed_8bit_adamw_fp16_fits_a_t4_as_measured(capsys) -> None:
    """The question users ask, answered as set: it fits, predicted within the model's held-out
    error (median) of the 12.06 GiB measured. The same setting without checkpointing does not
    fit (measured: oom), so the verdict is not the same whatever is asked."""
    setting = ["--batch-size", "1", "--seq-len", "1024", "--gradient-checkpointing", "on"]
    setting += ["--optimizer", "adamw_8bit", "--compute-dtype", "fp16", "--runs", str(REFERENCE_DIR)]
    out = _advise(capsys, *setting)
    match = re.fullmatch(r"fits: predicted (\d+\.\d+) GiB of 15\.00 GiB on t4", _headline(out))
    assert match is not None, out
    measured = _measured_8b_b1_s1024_checkpointed()
    assert round(measured, 2) == 12.06
    median = re.search(
        r"held-out error \(leave one configuration out\) over \d+ rows: median (\d+\.\d)%", out
    )
    assert median is not None, out
    assert abs(float(match.group(1)) - measured) / measured <= float(median.group(1)) / 100
    # The held-out rows are behind a flag (and once, with it: the next test).
    assert "| held-out row |" not in out and "Every held-out row: `--show-held-out`." in out
    setting[setting.index("on")] = "off"
    assert _headline(_advise(capsys, *setting)).startswith("does not fit: predicted 2")


def test_the_lessons_t4_setting_needs_no_shorter_sequence(capsys) -> None:
    """The lesson's T4 budget setting (b4 s2048, no checkpointing, 8-bit AdamW): the smallest change
    that fits keeps the sequence; every smaller change tried is in the table, predicted OOM."""
    out = _advise(
        capsys,
        "--batch",
        "4",
        "--seq",
        "2048",
        "--gradient-checkpointing",
        "off",
        "--optimizer",
        "adamw_8bit",
    )
    headline = _headline(out)
    assert headline.startswith("does not fit: predicted ")
    assert (
        "the smallest change that fits: batch 1 x grad accumulation 4 + gradient checkpointing on" in headline
    )
    assert "sequence" not in headline
    table = [line for line in out.splitlines() if line.startswith("| ") and "-trainer |" in line]
    assert [line.split(" | ")[3] for line in table] == ["OOM"] * 5 + ["fits"]


def test_a_change_that_shortens_the_sequence_says_so_in_the_headline(capsys) -> None:
    out = _advise(capsys, "--batch-size", "8", "--seq-len", "4096", "--show-held-out")
    headline = _headline(out)
    assert "the smallest change that fits shortens the sequence from 4096 to 2048 tokens: " in headline
    assert re.search(r"\+ seq 2048 \(predicted \d+\.\d\d GiB", headline), headline
    assert out.count("| held-out row |") == 1


def test_changes_are_tried_smallest_first_keeping_the_tokens_per_step() -> None:
    setting = Case("tiny", batch_size=4, seq_len=64, gradient_checkpointing=False)
    tried = changes(setting)
    assert [c.label for c in tried[:7]] == [
        "as set",
        "batch 2 x grad accumulation 2",
        "batch 1 x grad accumulation 4",
        "gradient checkpointing on",
        "batch 2 x grad accumulation 2 + gradient checkpointing on",
        "batch 1 x grad accumulation 4 + gradient checkpointing on",
        "seq 32",
    ]
    assert all(c.case.batch_size * c.case.grad_accum == 4 for c in tried)
    assert {c.case.seq_len for c in tried} == {64, 32, 16, 8}  # down to Case's shortest, 8
    assert len(changes(setting.replace(gradient_checkpointing=True, batch_size=1))) == 4  # seq only


def test_without_rows_of_the_settings_configuration_the_advice_is_undecided() -> None:
    """The smoke run measured neither the 8B's weights nor 8-bit Adam: said, not guessed."""
    case = Case("llama-3.1-8b", compute_dtype="fp16", optimizer="adamw_8bit", engine="trainer")
    report = run_advisor(get_profile("t4"), case, [REFERENCE_DIR / "h200-smoke"])
    assert "**undecided: the setting is not predictable from the measured rows (" in report


def test_measure_is_the_tools_and_is_named(capsys, tmp_path: Path) -> None:
    assert main([*EIGHT_B, "--batch-size", "1", "--seq-len", "1024", "--measure", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "tools/measure_fit.py --gpu t4 --model llama-3.1-8b --batch-size 1 --seq-len 1024 --out" in err
    assert not (tmp_path / "m").exists()


def test_tables_section_reports_the_held_out_error() -> None:
    text = fit_section(load_run(REFERENCE_DIR / "t4-default-on-h200"))
    assert text.startswith("## Fit advisor: held-out error on this run's rows")
    assert "median" in text and "| llama-3.2-3b-nf4-dq-fp16-b1-s512-w2m8-trainer | measured |" in text
    # The H200 run of the t4 tier: within the target on its own rows.
    assert "meets the target (median <= 5%, max <= 10%)" in text
