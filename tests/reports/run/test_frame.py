"""reports.run.frame: the results frame, typed once from the Result and Case fields."""

from __future__ import annotations

import pandas as pd
import pytest

from qlora_core.cases.case import FIELD_NAMES
from qlora_core.measurement.result import RESULT_FIELDS
from reports.run.frame import COLUMN_DTYPES, column_dtype, load_run, results_frame
from reports.run.repeats import REPEAT_COLUMNS


def test_every_result_and_case_field_is_a_column_with_its_type():
    columns = [name for name in RESULT_FIELDS if name != "case"] + list(FIELD_NAMES)
    columns += list(REPEAT_COLUMNS)
    assert list(COLUMN_DTYPES) == columns
    assert COLUMN_DTYPES["emulated"] == "boolean" and COLUMN_DTYPES["bf16_native"] == "boolean"
    assert COLUMN_DTYPES["double_quant"] == "boolean" and COLUMN_DTYPES["batch_size"] == "Int64"
    assert COLUMN_DTYPES["total_params"] == "Int64" and COLUMN_DTYPES["peak_alloc_gib"] == "float64"
    assert COLUMN_DTYPES["quant_type"] == "str" and COLUMN_DTYPES["target_modules"] == "str"
    assert COLUMN_DTYPES["losses"] is None  # per-step lists stay Python lists
    assert COLUMN_DTYPES["repeats"] == "Int64" and COLUMN_DTYPES["tokens_per_s_repeats"] is None


@pytest.mark.parametrize(
    ("annotation", "dtype"),
    [(bool, "boolean"), (bool | None, "boolean"), (int | None, "Int64"), (float, "float64"), (str, "str")],
)
def test_column_dtype(annotation, dtype):
    assert column_dtype(annotation) == dtype


def test_empty_run_has_every_typed_column():
    df = results_frame([])
    assert list(df.columns) == list(COLUMN_DTYPES)
    assert {c: str(t) for c, t in df.dtypes.items() if COLUMN_DTYPES[c]} == {
        c: t for c, t in COLUMN_DTYPES.items() if t
    }


def test_a_run_read_back_is_typed_and_keeps_missing_values_missing(build, tmp_path):
    measured = build.result(total_params=3_237_063_680, bf16_native=False, emulated=True, losses=[2.0, 1.5])
    unmeasured = build.result(double_quant=False, status="crashed")
    df = load_run(build.write_run_dir(tmp_path / "run", [measured, unmeasured])).results
    assert list(df["double_quant"]) == [True, False]  # a mask as it is, no guard needed
    assert df[~df["double_quant"]]["status"].tolist() == ["crashed"]
    assert df["total_params"].iloc[0] == 3_237_063_680 and pd.isna(df["total_params"].iloc[1])
    assert str(df["total_params"].dtype) == "Int64"  # a count with a missing value stays an integer
    assert df["bf16_native"].tolist()[0] is False and pd.isna(df["bf16_native"].iloc[1])
    assert df["losses"].iloc[0] == [2.0, 1.5]


def test_a_mistyped_value_fails_at_load_not_in_a_report(build):
    bad = build.result().flat()
    bad["case"]["batch_size"] = "four"
    with pytest.raises((TypeError, ValueError)):
        results_frame([bad])
