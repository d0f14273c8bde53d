"""`python -m reports baseline` and `python -m reports gate` on stored run folders."""

from __future__ import annotations

import json

import pytest

from reports.__main__ import EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, main
from reports.gate.baseline import BASELINE_DIFF_MD


def test_baseline_then_gate_passes_and_a_slower_run_fails(build, synthetic_run_dir, tmp_path, capsys):
    baseline = tmp_path / "base.json"
    assert (
        main(["baseline", str(synthetic_run_dir), str(baseline), "--command", "pytest bench --gpu t4"])
        == EXIT_OK
    )
    saved = json.loads(baseline.read_text())
    assert saved["command"] == "pytest bench --gpu t4" and saved["profile"] == "t4"

    assert main(["gate", str(synthetic_run_dir), str(baseline)]) == EXIT_OK
    assert "PASS" in capsys.readouterr().out
    assert (synthetic_run_dir / BASELINE_DIFF_MD).exists()

    # The same run, every ok case 30% slower (beyond any noise floor of the synthetic spreads).
    slower = []
    for result in build.synthetic_results():
        if result.status == "ok" and result.training.tokens_per_s:
            result.training.tokens_per_s *= 0.7
        slower.append(result)
    slow_dir = build.write_run_dir(tmp_path / "slow", slower, environment=build.synthetic_environment())
    assert main(["gate", str(slow_dir), str(baseline)]) == EXIT_REGRESSION
    out = capsys.readouterr().out
    assert "FAIL" in out and "tokens_per_s" in out


def test_gate_with_an_unusable_baseline_is_a_usage_error(synthetic_run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1, "cases": {')
    assert main(["gate", str(synthetic_run_dir), str(bad)]) == EXIT_USAGE
    assert "bad.json" in capsys.readouterr().err
    assert main(["baseline", str(tmp_path / "no-run"), str(bad)]) == EXIT_USAGE


def test_a_part_of_the_matrix_is_gated_with_selected_only(build, synthetic_run_dir, tmp_path, capsys):
    baseline = tmp_path / "base.json"
    assert main(["baseline", str(synthetic_run_dir), str(baseline)]) == EXIT_OK
    part = build.synthetic_results()[:3]  # a `pytest bench -k ...` run of three cases
    part_dir = build.write_run_dir(tmp_path / "part", part, environment=build.synthetic_environment())
    assert main(["gate", str(part_dir), str(baseline)]) == EXIT_REGRESSION  # the others are missing
    assert "in the baseline but not in this run" in capsys.readouterr().out
    assert main(["gate", str(part_dir), str(baseline), "--selected-only"]) == EXIT_OK
    assert "not selected in this run" in (part_dir / BASELINE_DIFF_MD).read_text()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"{}", "an empty JSON object ({}), not a qlora-bench baseline"),
        (bytes(range(0xD9, 0xFF)) * 8, "not a text file (byte 0 is not UTF-8)"),
        (None, "file not found"),
    ],
)
def test_gate_refuses_a_bad_baseline_in_words(synthetic_run_dir, tmp_path, capsys, content, words):
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_bytes(content)
    assert main(["gate", str(synthetic_run_dir), str(bad)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"error: baseline {bad}: ") and words in err
    assert "codec" not in err and "Traceback" not in err
    assert not (synthetic_run_dir / BASELINE_DIFF_MD).exists()


def test_gate_refuses_a_baseline_of_another_tier(synthetic_run_dir, tmp_path, capsys):
    baseline = tmp_path / "smoke.json"
    assert main(["baseline", str(synthetic_run_dir), str(baseline), "--command", "pytest bench"]) == EXIT_OK
    data = json.loads(baseline.read_text())
    baseline.write_text(json.dumps({**data, "matrix": "smoke"}))
    assert main(["gate", str(synthetic_run_dir), str(baseline)]) == EXIT_USAGE
    assert "made of matrix tier 'smoke', but this run is tier 'default'" in capsys.readouterr().err
