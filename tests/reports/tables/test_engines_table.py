"""tables.md's engine section, on the 8B engine rows measured on the H200 (committed run)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reports.run.frame import load_run
from reports.tables.engines import ATTRIBUTE_ABOVE, attribution, engine_comparison, engine_groups, versus_loop

RUN = Path(__file__).resolve().parents[3] / "reports" / "reference" / "engines-8b-h200"


def _by_engine(rows: pd.DataFrame) -> dict[str, pd.Series]:
    return {row["engine"]: row for _, row in rows.iterrows()}


def test_each_point_groups_its_engines_loop_first() -> None:
    groups = engine_groups(load_run(RUN).results)
    assert [list(g["engine"]) for g in groups] == [["loop", "trainer", "sft"], ["loop", "trainer"]]


def test_a_large_difference_names_the_measured_causes_and_what_they_leave_unexplained() -> None:
    rows = _by_engine(engine_groups(load_run(RUN).results)[0])
    assert attribution(rows["trainer"], rows["loop"]) == f"within {ATTRIBUTE_ABOVE:.0%} of the loop"
    sft = attribution(rows["sft"], rows["loop"])
    assert sft.startswith("peak allocated -39.5%")
    assert "adapters bfloat16 (loop: float32)" in sft
    assert "the optimizer states account for -0.16 of the -9.73 GiB" in sft


def test_a_difference_no_field_explains_says_so() -> None:
    rows = _by_engine(engine_groups(load_run(RUN).results)[0])
    slower = rows["trainer"].copy()
    slower["tokens_per_s"] = rows["loop"]["tokens_per_s"] * 0.8
    assert (
        attribution(slower, rows["loop"]) == "tokens/s -20.0%: no measured field differs: cause not measured"
    )


def test_a_run_with_one_engine_per_point_reads_not_run() -> None:
    run = load_run(RUN)
    run.results = run.results[run.results["engine"] == "loop"]
    assert "not run (no point of this run was trained by the loop and another engine)" in engine_comparison(
        run
    )


def test_a_row_that_did_not_train_says_why_instead_of_a_comparison() -> None:
    rows = _by_engine(engine_groups(load_run(RUN).results)[0])
    refused = rows["sft"].copy()
    refused["status"] = "unsupported"
    refused["reason"] = (
        "training: fp16's gradient scaler cannot unscale bf16 gradients\n--- last lines of the log"
    )
    for col in ("tokens_per_s", "peak_alloc_gib", "peak_reserved_gib", "nvml_peak_gib", "final_loss"):
        refused[col] = float("nan")
    assert versus_loop(refused, rows["loop"]) == (
        "unsupported: training: fp16's gradient scaler cannot unscale bf16 gradients"
    )
    assert versus_loop(rows["loop"], rows["loop"]) == "-"
    # Beside a loop row that did not train, nothing is compared.
    failed_loop = rows["loop"].copy()
    failed_loop["status"] = "crashed"
    assert versus_loop(rows["trainer"], failed_loop) == "not compared: the loop's row is crashed"
    run = load_run(RUN)
    run.results.loc[run.results["engine"] == "sft", ["status", "reason"]] = ["unsupported", "no kernel"]
    assert "| sft | unsupported |" in engine_comparison(
        run
    ) and "unsupported: no kernel |" in engine_comparison(run)
