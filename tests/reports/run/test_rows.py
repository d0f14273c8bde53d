"""reports.run.rows: selecting and pairing rows of a results frame."""

from __future__ import annotations

import json

import pandas as pd

from qlora_core.cases.case import FIELD_NAMES
from reports.run.folder import RESULTS_JSONL
from reports.run.frame import load_run
from reports.run.rows import POINT_FIELDS, NoRows, family_rows, model_sizes, pairs, usable


def test_family_rows_matches_exact_tags_and_prefixes(build):
    df = build.run(
        [
            build.result(families="factorial,gc"),
            build.result(families="ladder:2", batch_size=2),
            build.result(families="ladder:10", batch_size=3),
            build.result(families="gcx", batch_size=4),
        ]
    ).results
    assert list(family_rows(df, "gc")["batch_size"]) == [1]
    assert list(family_rows(df, "ladder:2")["batch_size"]) == [2]
    assert sorted(family_rows(df, "ladder:")["batch_size"]) == [2, 3]
    assert family_rows(df, "sweep").empty
    assert family_rows(build.run([]).results, "sweep").empty


def test_usable_distinguishes_absent_failed_and_unmeasured_rows(build):
    df = build.run([build.result(status="crashed"), build.result(batch_size=2)]).results
    absent = usable(df.iloc[0:0], "x")
    assert isinstance(absent, NoRows) and absent.absent and absent.why == "no x rows in this run"
    failed = usable(df[df["status"] == "crashed"], "x")
    assert isinstance(failed, NoRows) and not failed.absent and "1 crashed" in failed.why
    assert failed.evidence == (df["case_id"].iloc[0],)
    unmeasured = usable(df, "x", ("weight_bytes",))
    assert isinstance(unmeasured, NoRows) and "weight_bytes" in unmeasured.why
    df.loc[df["batch_size"] == 2, "weight_bytes"] = 10
    rows = usable(df, "x", ("weight_bytes",))
    assert isinstance(rows, pd.DataFrame) and list(rows["batch_size"]) == [2]


def test_point_fields_are_the_profile_and_every_case_field():
    assert POINT_FIELDS == ("profile", *FIELD_NAMES)


def test_pairs_match_rows_equal_on_every_other_point_field(build):
    df = build.run(
        [
            build.result(double_quant=True),
            build.result(double_quant=False),
            build.result(double_quant=False, seq_len=1024),
        ]
    ).results
    on, off = df[df["double_quant"]], df[~df["double_quant"]]
    found = pairs(on, off, vary=("double_quant",))
    assert [(int(a["seq_len"]), int(b["seq_len"])) for a, b in found] == [(512, 512)]
    assert pairs(on, off, vary=()) == []


def test_model_sizes_prefer_measured_counts_over_the_name(build):
    df = build.run(
        [
            build.result("llama-3.1-8b", **build.params("llama-3.1-8b")),
            build.result("llama-2-13b", quant_type="none", status="oom"),
        ]
    ).results
    sizes = model_sizes(df)
    assert sizes["llama-3.1-8b"] == (8_030_261_248, "measured")
    assert sizes["llama-2-13b"] == (13e9, "name")


def test_an_fp32_compute_row_is_not_a_16_bit_stored_model():
    import pandas as pd

    from reports.run.rows import stored_in_16bit

    rows = pd.DataFrame({"case_id": ["a", "b", "c"], "compute_dtype": ["bf16", "fp32", "fp16"]})
    assert list(stored_in_16bit(rows)["case_id"]) == ["a", "c"]
    assert stored_in_16bit(rows.iloc[0:0]).empty


def test_pairs_read_a_later_field_missing_from_an_older_row_as_its_default(build, tmp_path):
    older = json.loads(build.result(compute_dtype="fp32").to_json())
    del older["case"]["load_only"]  # stored before the field existed, at schema version 1
    older["schema_version"] = 1
    rows = [build.result(compute_dtype="bf16").to_json(), json.dumps(older)]
    (tmp_path / RESULTS_JSONL).write_text("".join(row + "\n" for row in rows))
    df = load_run(tmp_path).results
    bf16, fp32 = df[df["compute_dtype"] == "bf16"], df[df["compute_dtype"] == "fp32"]
    assert len(pairs(bf16, fp32, vary=("compute_dtype",))) == 1
    df.loc[df["compute_dtype"] == "fp32", "load_only"] = True  # a real difference still splits
    assert (
        pairs(df[df["compute_dtype"] == "bf16"], df[df["compute_dtype"] == "fp32"], ("compute_dtype",)) == []
    )
