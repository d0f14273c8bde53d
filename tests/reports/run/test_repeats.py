"""reports.run.repeats: the fresh-process repeats of a case folded into the row reports read."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from qlora_core.measurement.result import Result
from reports.run.folder import read_results_jsonl
from reports.run.frame import load_run, results_frame
from reports.run.repeats import fold_case, fold_repeats
from reports.run.stats import bootstrap_median_ci


def repeats_of(base: Result, **per_repeat: list) -> list[Result]:
    """One Result per repeat: `field=[value of repeat 0, value of repeat 1, ...]`."""
    count = len(next(iter(per_repeat.values())))
    return [
        base.replaced(repeat=i, **{name: values[i] for name, values in per_repeat.items()})
        for i in range(count)
    ]


@pytest.fixture
def ok_case(build):
    def make(**fields) -> Result:
        return build.result(tokens_per_s=1000.0, peak_alloc_gib=4.0, final_loss=2.0, **fields)

    return make


def test_three_ok_repeats_fold_to_the_median_with_spread_and_interval(ok_case):
    rows = repeats_of(ok_case(), tokens_per_s=[1000.0, 900.0, 1100.0], kernel_ms_per_step=[50.0, 51.0, 49.0])
    row = fold_case(rows)
    assert row["status"] == "ok" and row["repeats"] == 3 and row["repeat"] == 0
    assert row["tokens_per_s"] == 1000.0 and row["kernel_ms_per_step"] == 50.0
    assert row["tokens_per_s_repeats"] == [1000.0, 900.0, 1100.0]
    assert row["kernel_ms_repeats"] == [50.0, 51.0, 49.0]
    assert row["tokens_per_s_cv"] == pytest.approx(0.1)  # stdev 100 / mean 1000
    ci = bootstrap_median_ci([1000.0, 900.0, 1100.0])
    assert (row["tokens_per_s_ci_low"], row["tokens_per_s_ci_high"]) == (ci.low, ci.high)
    assert row["kernel_ms_per_step_cv"] == pytest.approx(0.02)
    assert row["repeat_memory_note"] == ""


def test_a_single_repeat_says_nothing_about_the_noise_between_processes(ok_case):
    row = fold_case([ok_case()])
    assert row["repeats"] == 1 and row["tokens_per_s"] == 1000.0
    for name in ("tokens_per_s_cv", "tokens_per_s_ci_low", "tokens_per_s_repeats", "kernel_ms_repeats"):
        assert row[name] is None, name  # None, never 0


def test_a_failing_repeat_is_the_folded_outcome_never_hidden(ok_case):
    rows = repeats_of(ok_case(), status=["ok", "oom", "crashed"], reason=["", "OOM in training", "died"])
    row = fold_case(rows)
    assert row["status"] == "oom" and row["repeat"] == 1
    assert row["reason"] == "repeat 2 of 3: OOM in training"
    assert row["repeats"] == 1 and row["tokens_per_s_repeats"] is None
    # A broken fold that took the first repeat would say ok.
    assert fold_case(rows[:1])["status"] == "ok"


def test_memory_comes_from_the_first_ok_repeat_and_a_differing_repeat_is_flagged(ok_case):
    rows = repeats_of(ok_case(), peak_alloc_gib=[4.0, 4.02, 4.2])
    row = fold_case(rows)
    assert row["peak_alloc_gib"] == 4.0
    assert row["repeat_memory_note"] == "repeat 3: peak_alloc_gib 4.200 vs 4.000 GiB (+5.0%)"
    assert fold_case(rows[:2])["repeat_memory_note"] == ""  # 0.5% is within 1%


def test_cases_fold_separately_in_order_of_first_appearance(ok_case):
    a = ok_case(batch_size=1)
    b = ok_case(batch_size=2)
    interleaved = [*zip(repeats_of(a, tokens_per_s=[10.0, 20.0]), repeats_of(b, tokens_per_s=[30.0, 50.0]))]
    rows = fold_repeats([r for pair in interleaved for r in pair])
    assert [(r["case_id"], r["tokens_per_s"]) for r in rows] == [(a.case_id, 15.0), (b.case_id, 40.0)]


def test_a_run_folder_keeps_every_repeat_and_reads_back_folded(build, tmp_path):
    base = build.result(tokens_per_s=100.0)
    rows = repeats_of(base, tokens_per_s=[100.0, 120.0])
    run_dir = build.write_run_dir(tmp_path / "run", rows)
    # A rerun of repeat 1 (as --resume appends) replaces that repeat only.
    with (run_dir / "results.jsonl").open("a") as f:
        f.write(rows[1].replaced(tokens_per_s=140.0).to_json() + "\n")
    stored = read_results_jsonl(run_dir / "results.jsonl")
    assert [(r.repeat, r.training.tokens_per_s) for r in stored] == [(0, 100.0), (1, 140.0)]
    run = load_run(run_dir)
    assert len(run.results) == 1 and run.results["tokens_per_s"].iloc[0] == 120.0
    assert run.results["tokens_per_s_repeats"].iloc[0] == [100.0, 140.0]
    assert list(run.repeats["repeat"]) == [0, 1]


def test_an_old_row_without_a_repeat_field_reads_as_repeat_0(ok_case):
    old = json.loads(ok_case().to_json())
    del old["repeat"]
    frame = results_frame([old])
    assert frame["repeat"].tolist() == [0] and pd.isna(frame["tokens_per_s_cv"].iloc[0])
