"""reports.tables.lesson: the lesson's tables with measured numbers."""

from __future__ import annotations

import re

import pytest

from reports.tables.lesson import NOT_RUN, render_tables


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _rows(section: str) -> list[list[str]]:
    """The cells of each row of a section's table, as a table or, where a row was too wide, as the
    list `markdown.fit_width` writes instead (item: the first cell; sub-items: "*header*: cell")."""
    lines = section.splitlines()
    if any(line.startswith("| ") for line in lines):
        return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines if line.startswith("| ")][
            1:
        ]
    rows: list[list[str]] = []
    for line in lines:
        if line.startswith("- **"):
            rows.append([line[4:-2]])
        elif line.startswith("  - *") and rows:
            rows[-1].append(line.split("*: ", 1)[1])
        elif line.startswith("    ") and rows:
            rows[-1][-1] += " " + line.strip()
    return rows


def _row(section: str, first_cell: str) -> list[str]:
    return next(row for row in _rows(section) if row[0] == first_cell)


def test_render_tables_on_a_synthetic_t4_run(synthetic_run):
    text = render_tables(synthetic_run)
    assert text.startswith("# The lesson's tables, measured")
    assert "- profile: t4 (emulated on NVIDIA H200)" in text
    assert "bitsandbytes 0.50.2" in text and "peft 0.21.2" in text

    memory = _section(text, "Memory for a 7B model")
    fp32 = _row(memory, "FP32")
    assert fp32[:4] == ["FP32", "28 GB", NOT_RUN, "~100 GB"] and fp32[4].startswith(f"{NOT_RUN} (loaded only")
    assert "How 'Total with Training' is read" in memory and "not full fine-tuning" in memory
    int4 = _row(memory, "INT4")
    assert int4[1] == "3.5 GB" and int4[2] == "llama-3.1-8b: 5.70 GB; 4.97 GB at 7e9 params"
    assert "over 4 setting(s)" in int4[4]
    assert _row(memory, "FP16")[2].startswith(f"{NOT_RUN} (")  # the 16-bit 8B row ran out of memory

    dtypes = _section(text, "Compute data type")
    assert _row(dtypes, "float32")[:3] == ["float32", "Slow", "700"]
    fp16 = _row(dtypes, "float16")
    assert fp16[2] == "1,940" and fp16[4] == "1 of 3 runs" and "lr 0.001: NaN" in fp16[5]
    assert "native bf16 no (datasheet" in dtypes

    budget = _section(text, "T4 budget")
    assert _row(budget, "8B model (4-bit)")[1:4] == ["4 GB", "4 GB", "5.70 GB"]
    assert _row(budget, "Activations (batch=4, seq=2048)")[3] == f"{NOT_RUN} (status oom)"
    assert _row(budget, "Optimizer (8-bit Adam)")[3] == f"{NOT_RUN} (status oom)"
    assert _row(budget, "Fits in the T4")[3] == "status oom"

    trade = _section(text, "QLoRA vs LoRA trade-offs")
    assert _row(trade, "T4 compatibility")[2:5] == [
        "llama-3.2-3b ok, llama-3.1-8b oom",
        "Up to 8B models",
        "llama-3.2-3b ok, llama-3.1-8b ok",
    ]
    assert "ppl 16.60" in _row(trade, "Quality")[2]
    assert _row(trade, "A100 compatibility")[2].startswith(NOT_RUN)

    formula = _section(text, "Memory calculation")
    assert _row(formula, "llama-3.1-8b")[2:] == ["8 x 4 / 8 = 4 GB", "4.02 GB", "5.70 GB (nf4+dq)", "1.42x"]
    assert _row(formula, "13B (lesson)")[1] == NOT_RUN


# Measured columns of each table (0-based): on an empty run every one must say "not run".
MEASURED_COLUMNS = {
    "Memory for a 7B model": (2, 4),
    "Compute data type": (2, 4, 5),
    "T4 budget": (3,),
    "QLoRA vs LoRA trade-offs": (2, 4),
    "Memory calculation": (1, 3, 4),
}


@pytest.mark.parametrize(("title", "columns"), MEASURED_COLUMNS.items())
def test_render_tables_on_an_empty_run_makes_up_no_number(build, title, columns):
    section = _section(render_tables(build.run([])), title)
    rows = _rows(section)
    assert rows
    for cells in rows:
        for i in columns:
            assert cells[i].startswith(NOT_RUN), (title, cells)
            assert not re.search(r"\d\.\d", cells[i]), (title, cells)


def test_budget_table_needs_the_t4_profile_and_header_falls_back_to_results(build):
    row = build.result("llama-3.1-8b", families="ladder:0", profile="h100", **build.gpu(False))
    row.environment.torch_version = "2.13.0"
    text = render_tables(build.run([row]))
    assert "no ladder:0 row on profile t4; this run: h100" in _section(text, "T4 budget")
    assert "- profile: h100" in text and "torch 2.13.0" in text and "GPU: Tesla T4" in text


def test_the_header_names_the_engine_behind_each_familys_rows():
    import pandas as pd

    from reports.tables.lesson import engines_line

    rows = pd.DataFrame(
        [
            {"case_id": "a", "engine": "trainer", "families": "factorial,speed"},
            {"case_id": "b", "engine": "trainer", "families": "ladder:0"},
            {"case_id": "c", "engine": "loop", "families": "quality,stability"},
            {"case_id": "d", "engine": None, "families": "sweep"},  # stored before the engine axis
        ]
    )
    assert engines_line(rows) == (
        "transformers.Trainer (2 rows: factorial, speed, ladder);"
        " core loop (2 rows: quality, stability, sweep)"
    )


def test_the_speed_row_reads_device_bound_points_only(build):
    from reports.tables.lesson import tradeoffs

    def speed(quant: str, seq: int, tps: list[float], host_bound: bool):
        row = build.result(
            "llama-3.2-3b", quant_type=quant, seq_len=seq, host_bound=host_bound, **build.gpu()
        )
        return build.in_processes(row, tps)

    rows = speed("nf4", 2048, [850.0, 851.0, 849.0], False) + speed("none", 2048, [1000.0] * 3, False)
    rows += speed("nf4", 512, [400.0] * 3, True) + speed("none", 512, [1000.0] * 3, True)
    line = next(x for x in tradeoffs(build.run(rows)).splitlines() if x.startswith("| Training speed"))
    assert "+15.0% slower [" in line and "over 3 and 3 processes" in line
    assert "1 host-bound point(s) left out" in line and "+60" not in line


# -- what an OOM needs: the T4 budget and the OOM ladder ---------------------------------
_NEEDED_LABEL = "needed (measured uncapped on NVIDIA H200)"


def _oom_with_need(build, step: int, peak: float, **fields):
    """A ladder row that ran out of memory under the T4 cap, with its uncapped rerun folded in."""
    return build.result(
        "llama-3.1-8b",
        families=f"ladder:{step}",
        status="oom",
        **build.gpu(),
        **build.weights("llama-3.1-8b"),
        load_alloc_gib=5.3,
        prepare_alloc_gib=7.2,
        lora_alloc_gib=7.36,
        **build.needed(peak, peak + 0.6),
        **fields,
    )


def test_budget_and_ladder_of_ooms_show_what_they_needed_and_no_not_run_cell(build):
    batches = [
        {"batch_size": 4},
        {"batch_size": 2, "grad_accum": 2},
        {"batch_size": 1, "grad_accum": 4},
        {"batch_size": 1, "grad_accum": 4, "seq_len": 1024},
    ]
    rows = [
        _oom_with_need(build, k, peak, gradient_checkpointing=False, **fields)
        for k, (peak, fields) in enumerate(zip((20.0, 17.0, 15.5, 14.8), batches))
    ]
    ok = build.memory(5.3, 7.2, 7.36, 9.0)
    rows.append(
        build.result(
            "llama-3.1-8b",
            families="ladder:4",
            batch_size=1,
            grad_accum=4,
            seq_len=1024,
            memory_cap_gib=14.49,
            **build.gpu(),
            **ok,
        )
    )
    text = render_tables(build.run(rows))
    budget = _section(text, "T4 budget")
    assert NOT_RUN not in budget
    assert f"12.64 GiB {_NEEDED_LABEL}" in _row(budget, "Activations (batch=4, seq=2048)")[3]
    assert (
        "needs 20.60 GiB (22.12 GB) at its device peak, misses the T4's 15.0 GiB by 5.60 GiB"
        in _row(budget, "Fits in the T4")[3]
    )
    ladder = _section(text, "OOM ladder")
    assert NOT_RUN not in ladder
    assert _row(ladder, "ladder:0")[4] == f"20.00 GiB {_NEEDED_LABEL}"
    assert _row(ladder, "ladder:1")[6] == "+3.00 GiB (+15.0%)"
    assert _row(ladder, "ladder:4")[4] == "9.00 GiB"  # the capped run's own peak: unlabelled
    assert _row(ladder, "ladder:4")[7] == "yes"
    assert "First step that fits (cap 14.49 GiB): ladder:4, 4. Enable gradient checkpointing" in ladder
    assert "It trains seq 1024, not step 0's 512: the steps add up." in ladder  # a shorter sequence, said
    # Deliberately broken: without the reruns the ladder's oom peaks are not run.
    for row in rows[:4]:
        row.needed.needed_status = None
    ladder = _section(render_tables(build.run(rows)), "OOM ladder")
    assert _row(ladder, "ladder:0")[4] == f"{NOT_RUN} (status oom)"


def test_memory_by_precision_reads_load_only_rows_and_uncapped_reruns(build):
    """FP32 from an uncapped rerun (labelled needed), INT8 from a load-only row, the full
    fine-tuning reading from the measured weights; a broken table would miss each."""
    seven, base = "llama-2-7b", 6_738_415_616
    load = {"families": "weights", "load_only": True}
    rows = [
        build.result(seven, quant_type="none", compute_dtype="fp32", status="oom", **load),
        build.result(
            seven, quant_type="int8", compute_dtype="fp16", total_params=base, weight_bytes=7 * 10**9, **load
        ),
        build.result(
            seven, quant_type="none", compute_dtype="fp16", total_params=base, weight_bytes=2 * base, **load
        ),
    ]
    run = build.run(rows)
    run.results["needed_load_alloc_gib"] = [4 * base / 2**30, None, None]
    run.results["needed_on"] = ["NVIDIA H200", "", ""]
    from reports.tables.lesson import memory_by_precision

    memory = memory_by_precision(run)
    fp32, int8, fp16 = _row(memory, "FP32"), _row(memory, "INT8"), _row(memory, "FP16")
    assert fp32[2] == (
        "llama-2-7b: oom under the cap; needed (measured uncapped on NVIDIA H200): 26.95 GB allocated after"
        " load; 28.00 GB at 7e9 params"
    )
    assert int8[2] == "llama-2-7b: 7.00 GB; 7.27 GB at 7e9 params"
    assert fp16[2].startswith("llama-2-7b: 13.48 GB") and fp16[5] == "llama-2-7b: 53.91 GB"
    assert fp16[4].startswith(NOT_RUN)  # a load-only 16-bit row is no training total


# -- tokens/s measured on the CPU ----------------------------------------------------------------
def _dtype_rows(build, device: str) -> list:
    """The fp32-family point at three compute dtypes; tokens/s as one CPU run measured them."""
    speeds = {"fp32": 2_091.0, "fp16": 531.0, "bf16": 8_024.0}
    profile = "cpu" if device == "cpu" else "t4"
    extra = {"device": "cpu"} if device == "cpu" else build.gpu()
    return [
        build.result("tiny", compute_dtype=dtype, families="fp32", profile=profile, tokens_per_s=tps, **extra)
        for dtype, tps in speeds.items()
    ]


def test_cpu_tokens_per_s_are_labelled_as_no_speed_measurement(build):
    from reports.run.rows import CPU_SPEED_LABEL
    from reports.tables.lesson import compute_dtypes

    cpu = compute_dtypes(build.run(_dtype_rows(build, "cpu")))
    rows = [line for line in cpu.splitlines() if line.startswith(("| float", "| bfloat"))]
    assert len(rows) == 3 and all(f"({CPU_SPEED_LABEL})" in row for row in rows), cpu
    assert "| bfloat16 | Fast | 8,024 (CPU: not a speed measurement) |" in cpu
    assert "not the GPU speed the lesson's Speed column is about" in cpu
    # The same figures measured on a GPU are speed measurements: shown bare, with no caveat.
    gpu = compute_dtypes(build.run(_dtype_rows(build, "cuda")))
    assert "| bfloat16 | Fast | 8,024 |" in gpu and CPU_SPEED_LABEL not in gpu


def test_cpu_rows_stay_out_of_the_speed_trade_off_and_the_engine_comparison(build):
    from reports.tables.engines import attribution
    from reports.tables.lesson import tradeoffs

    rows = [
        build.result("tiny", quant_type=q, profile="cpu", device="cpu", tokens_per_s=tps, families="speed")
        for q, tps in (("nf4", 8_561.0), ("none", 1_085.0))
    ]
    line = next(x for x in tradeoffs(build.run(rows)).splitlines() if x.startswith("| Training speed"))
    assert "2 CPU row(s) left out (CPU: not a speed measurement)" in line and "slower [" not in line
    # An engine's tokens/s against the loop's is compared on a GPU only.
    for device, compared in (("cpu", False), ("cuda", True)):
        loop, trainer = (
            build.result("tiny", engine=engine, profile="cpu", device=device, tokens_per_s=tps)
            for engine, tps in (("loop", 1000.0), ("trainer", 500.0))
        )
        frame = build.run([loop, trainer]).results
        assert ("tokens/s -50.0%" in attribution(frame.iloc[1], frame.iloc[0])) is compared, device
