"""reports.claims.points: the points a verdict names, and rows judged by what they needed uncapped."""

from __future__ import annotations

import math

from reports.claims.points import (
    DEVICE_BOUND_POINT,
    left_out_text,
    point_label,
    points_of,
    points_text,
    with_needed,
)

THREE = "llama-3.2-3b"
H200 = "needed (measured uncapped on NVIDIA H200)"


def _sweep_row(build, batch, seq, status="ok", **fields):
    return build.result(THREE, families="sweep", batch_size=batch, seq_len=seq, status=status, **fields)


def test_point_label_names_batch_accumulation_and_length(build):
    rows = [
        _sweep_row(build, 4, 2048),
        build.result(THREE, batch_size=1, grad_accum=4, seq_len=1024, gradient_checkpointing=False),
    ]
    run = build.run(rows)
    assert [point_label(r) for _, r in run.results.iterrows()] == ["b4 s2048", "b1 ga4 s1024 nogc"]


def test_points_of_evidence_names_rows_statuses_and_tables(build):
    rows = [
        _sweep_row(build, 1, 512),
        _sweep_row(build, 4, 2048, "oom"),
        build.result("llama-3.1-8b", batch_size=1, seq_len=512),
    ]
    run = build.run(rows)
    evidence = [*run.results["case_id"], "quant_codes"]
    assert points_of(run.results, evidence) == (
        "llama-3.2-3b b1 s512, b4 s2048 (oom); llama-3.1-8b b1 s512; measurement quant_codes"
    )
    assert points_of(run.results, []) == ""


def test_with_needed_judges_an_oom_by_its_uncapped_rerun_and_labels_it(build):
    capped = _sweep_row(build, 4, 2048, "oom", **build.gpu(), **build.needed(peak=18.36, device_peak=19.2))
    ok = _sweep_row(build, 1, 512, **build.gpu(), **build.memory(2.0, 2.8, 2.9, 4.8))
    judged = with_needed(build.run([ok, capped]).results)
    oom_id = capped.case_id
    row = judged.rows.set_index("case_id").loc[oom_id]
    assert row["status"] == "ok" and row["peak_alloc_gib"] == 18.36 and row["lora_alloc_gib"] == 7.36
    assert math.isnan(row["memory_cap_gib"])
    assert judged.labels == {oom_id: H200}
    # The row that ran ok keeps its own figures and no label.
    assert judged.rows.set_index("case_id").loc[ok.case_id, "peak_alloc_gib"] == 4.8
    assert points_text(judged.rows, judged.labels) == f"llama-3.2-3b b1 s512, b4 s2048: {H200}"


def test_an_oom_without_a_measured_need_stays_an_oom_and_is_named(build):
    never = _sweep_row(build, 4, 2048, "oom", **build.gpu())
    twice = _sweep_row(build, 4, 1024, "oom", **build.gpu(), **build.needed(30.0, 31.0, status="oom"))
    crashed = _sweep_row(build, 2, 512, "crashed", **build.gpu())
    judged = with_needed(build.run([never, twice, crashed]).results)
    assert list(judged.rows["status"]) == ["oom", "oom", "crashed"] and judged.labels == {}
    assert left_out_text(judged.rows) == (
        "llama-3.2-3b b4 s2048 ran out of memory (no uncapped rerun measured it);"
        " llama-3.2-3b b4 s1024 ran out of memory (its uncapped rerun ended oom);"
        " llama-3.2-3b b2 s512 ended crashed"
    )
    kept = judged.rows.iloc[0:0]
    assert judged.points(kept).startswith("no figure: llama-3.2-3b b4 s2048 ran out of memory")


def test_the_device_bound_point_text_comes_from_the_matrix_tiers():
    assert "b4 s512 on t4, l4, a10g" in DEVICE_BOUND_POINT
    assert "b4 s2048 on" in DEVICE_BOUND_POINT and "h100" in DEVICE_BOUND_POINT
    assert "t4x2" not in DEVICE_BOUND_POINT and "cpu" not in DEVICE_BOUND_POINT
