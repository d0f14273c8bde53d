"""tools/measure_fit.py: the advisor's question checked before anything runs; the setting measured
into a run folder on the CPU, its report with measured beside predicted."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from qlora_core.cases.families import Family
from reports.fit.advisor import REFERENCE_DIR

_PATH = Path(__file__).resolve().parents[2] / "tools" / "measure_fit.py"
_spec = importlib.util.spec_from_file_location("measure_fit", _PATH)
assert _spec is not None and _spec.loader is not None
mf = importlib.util.module_from_spec(_spec)
sys.modules["measure_fit"] = mf
_spec.loader.exec_module(mf)


def test_a_bad_question_is_refused_before_anything_is_written(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["--gpu", "cpu", "--model", "tiny", "--batch-size", "2", "--seq-len", "64", "--out", str(out)]
    assert mf.main([*args, "--optimizer", "sgd"]) == 2
    assert "--optimizer 'sgd': allowed: adamw, adamw_8bit, paged_adamw_8bit" in capsys.readouterr().err
    assert mf.main([*args, "--runs", str(tmp_path / "absent")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_the_setting_is_measured_into_a_run_folder_on_the_cpu(tmp_path: Path, capsys, tmp_cache) -> None:
    """The tiny shape on the CPU: not predictable from the smoke rows (undecided), so the setting
    alone is measured; its row is in the folder, the report shows it beside the prediction."""
    out = tmp_path / "run"
    args = ["--gpu", "cpu", "--model", "tiny", "--batch-size", "2", "--seq-len", "64"]
    args += ["--runs", str(REFERENCE_DIR / "h200-smoke"), "--out", str(out), "--case-timeout", "600"]
    assert mf.main(args) == 0
    report = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["case"]["batch_size"], r["case"]["seq_len"], r["status"]) for r in rows] == [(2, 64, "ok")]
    assert rows[0]["families"] == Family.FIT_ADVISOR
    assert (out / "cases" / f"{rows[0]['case_hash']}.json").is_file()
    assert "**undecided: " in report and "| measured status |" in report
    assert f"| {rows[0]['case_id']} | - | - | - | ok |" in report
