"""tables.md's engine section, on the 8B engine rows measured on the H200 (committed run)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reports.engines_table import ATTRIBUTE_ABOVE, attribution, engine_comparison, engine_groups
from reports.frame import load_run

RUN = Path(__file__).resolve().parents[2] / "reports" / "reference" / "engines-8b-h200"


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
