"""tables.md's multi-GPU section: hand-made t4x2 rows, and the committed H200 run of the family."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qlora_core.measurement.result import Result
from reports.run.frame import load_run
from reports.tables.lesson import render_tables
from reports.tables.multigpu import HEADERS, RUN_COMMAND, multigpu_table

RUN = Path(__file__).resolve().parents[3] / "reports" / "reference" / "multigpu-t4x2"
POINT = {"batch_size": 4, "seq_len": 512, "engine": "trainer", "compute_dtype": "fp16"}
FSDP_READY = {"quant_storage": "fp16", "prepare_kbit": False}
# The table's columns, by header.
STRATEGY, GPUS, LOAD, STATUS = "Strategy", "GPUs", "4-bit storage, prepare, load", "Status"
ALLOC, RESERVED, DEVICE = "Per-GPU peak allocated", "Per-GPU peak reserved", "Per-GPU device peak (NVML)"
HOST, FIT, TOKENS = "Host RAM peak (RSS)", "Fits the card", "Tokens/s (all GPUs)"
BUSY, SCALING = "GPU busy", "Scaling efficiency"


def _row(build: SimpleNamespace, status: str = "ok", **fields: Any) -> Result:
    return build.result("llama-3.1-8b", families="multigpu", status=status, profile="t4x2", **fields)


def _ranks(peak: float, **fields: Any) -> dict[str, Any]:
    """A two-rank row's merged peaks (the max) and each rank's; NVML 0.6 GiB over a 0.6 base."""
    return {
        "world_size": 2,
        "peak_alloc_gib": peak,
        "peak_reserved_gib": peak + 1.0,
        "nvml_base_gib": 0.6,
        "nvml_peak_gib": peak + 1.0 + 0.6 + 0.6,
        "rank_peak_alloc_gib": [peak - 0.5, peak],
        "rank_peak_reserved_gib": [peak + 0.5, peak + 1.0],
        **fields,
    }


def _table_row(text: str, case_end: str) -> dict[str, str]:
    """The cells, by header, of the row whose case id ends with `case_end`: a table row, or in
    tables.md, where the rows are too wide for a line, the list item `markdown.fit_width` writes."""
    rows = [line for line in text.splitlines() if line.startswith("| llama")]
    if rows:
        found = [r for r in rows if r.split(" | ")[0].endswith(case_end)]
        assert len(found) == 1, rows
        return dict(zip(HEADERS, (cell.strip() for cell in found[0].strip("| ").split(" | ")), strict=True))
    items: list[dict[str, str]] = []
    for line in text.splitlines():
        if line.startswith("- **llama"):
            items.append({HEADERS[0]: line[4:-2]})
            last = HEADERS[0]
        elif line.startswith("  - *") and items:
            last, cell = line[5:].split("*: ", 1)
            items[-1][last] = cell
        elif line.startswith("    ") and items:
            items[-1][last] += " " + line.strip()
    found_items = [item for item in items if item[HEADERS[0]].endswith(case_end)]
    assert len(found_items) == 1 and set(found_items[0]) == set(HEADERS), items
    return found_items[0]


def _pair(build: SimpleNamespace, single_tps: float = 1000.0, **multi_fields: Any) -> list[Result]:
    single = _row(build, **POINT, **FSDP_READY, **build.gpu(), **build.memory(7, 7, 7.2, 12.0))
    single.training.tokens_per_s = single_tps
    ddp = _row(
        build,
        **{**POINT, **FSDP_READY, "num_gpus": 2, "strategy": "ddp", **multi_fields},
        **build.gpu(),
        **_ranks(9.0),
    )
    ddp.training.tokens_per_s = 1500.0
    return [single, ddp]


def test_a_run_without_multi_gpu_rows_says_which_command_runs_them(build: SimpleNamespace) -> None:
    single = _row(build, **POINT, **build.gpu(), **build.memory(7, 7, 7.2, 12.0))
    text = multigpu_table(build.run([single]))
    assert "not run: no multi-GPU rows (num_gpus > 1)" in text and f"`{RUN_COMMAND}`" in text
    assert "| Case |" not in text


def test_scaling_efficiency_is_n_gpu_tokens_over_n_times_the_one_card_case(build: SimpleNamespace) -> None:
    text = multigpu_table(build.run(_pair(build)))
    ddp = _table_row(text, "-2gpu-ddp")
    assert (ddp[STRATEGY], ddp[GPUS]) == ("ddp", "2") and ddp[TOKENS] == "1,500"
    assert ddp[SCALING] == "0.75"  # 1500 / (2 x 1000)
    assert _table_row(text, "-trainer")[SCALING] == "-"  # the one-card case is the reference
    assert "Scaling efficiency against llama-3.1-8b" in text


def test_no_efficiency_against_a_one_card_case_of_other_settings(build: SimpleNamespace) -> None:
    # Broken pairing: the two-GPU case trains batch 2, so the one-card case is no reference.
    text = multigpu_table(build.run(_pair(build, batch_size=2)))
    assert _table_row(text, "-2gpu-ddp")[SCALING] == "-"
    assert "No N-GPU case has a one-card case of equal settings" in text


def test_no_efficiency_when_the_one_card_case_measured_no_speed(build: SimpleNamespace) -> None:
    rows = _pair(build)
    rows[0].status, rows[0].training.tokens_per_s = "oom", None
    assert _table_row(multigpu_table(build.run(rows)), "-2gpu-ddp")[SCALING] == "-"


def test_a_host_bound_side_is_marked_on_the_efficiency(build: SimpleNamespace) -> None:
    rows = _pair(build)
    rows[1].training.host_bound, rows[1].training.gpu_busy = True, 0.4
    ddp = _table_row(multigpu_table(build.run(rows)), "-2gpu-ddp")
    assert ddp[BUSY] == "0.40 (host-bound)" and ddp[SCALING] == "0.75 (a host-bound side)"


def test_per_gpu_peaks_are_the_max_over_ranks_with_each_rank_beside(build: SimpleNamespace) -> None:
    ddp = _table_row(multigpu_table(build.run(_pair(build))), "-2gpu-ddp")
    assert ddp[ALLOC] == "9.00 GiB (ranks 8.50, 9.00)"
    assert ddp[RESERVED] == "10.00 GiB (ranks 9.50, 10.00)"
    assert ddp[DEVICE] == "10.60 GiB"  # NVML 11.2 minus the 0.6 GiB the GPU held before
    assert ddp[FIT] == "yes (device 10.60 of 15.00 GiB)"


def test_an_ok_row_over_the_card_does_not_fit(build: SimpleNamespace) -> None:
    # The allocator cap held, but the device peak (NVML) is above T4's 15 GiB.
    rows = _pair(build)
    rows[1].memory.nvml_peak_gib = 0.6 + 15.2
    assert _table_row(multigpu_table(build.run(rows)), "-2gpu-ddp")[FIT] == "no (device 15.20 of 15.00 GiB)"


def test_an_oom_row_shows_what_it_needed_labelled_and_does_not_fit(build: SimpleNamespace) -> None:
    oom = _row(build, "oom", **POINT, **build.gpu(), **build.needed(16.7, 20.0))
    rows = [*_pair(build), oom]
    cells = _table_row(multigpu_table(build.run(rows)), "-s512-trainer")
    label = "needed (measured uncapped on NVIDIA H200)"
    assert (
        cells[STATUS] == "oom"
        and cells[ALLOC] == f"16.70 GiB {label}"
        and cells[DEVICE] == f"20.00 GiB {label}"
    )
    assert cells[FIT] == "no (oom under the cap)"
    # Without an uncapped rerun, nothing is shown as its peak (a peak read at an OOM is truncated).
    bare = _row(build, "oom", **POINT, **build.gpu(), peak_alloc_gib=14.2)
    cells = _table_row(multigpu_table(build.run([*_pair(build), bare])), "-s512-trainer")
    assert cells[ALLOC] == "not measured (status oom)" and cells[FIT] == "no (oom under the cap)"


def test_a_cpu_profile_has_no_card_to_fit(build: SimpleNamespace) -> None:
    rows = _pair(build)
    for r in rows:
        r.profile = "cpu"
    cells = _table_row(multigpu_table(build.run(rows)), "-2gpu-ddp")
    assert cells[FIT] == "- (no card memory: not a GPU profile)"


def test_the_committed_h200_run_renders_its_per_gpu_memory_and_scaling() -> None:
    text = render_tables(load_run(RUN))
    start = text.index("## Multi-GPU: per-GPU memory and scaling")
    section = text[start : text.index("\n## ", start)]
    fsdp, ddp = _table_row(section, "-2gpu-fsdp"), _table_row(section, "-2gpu-ddp")
    single = _table_row(section, "-noprep-qs-fp16-w2m8-trainer")
    uint8 = _table_row(section, "-s512-w2m8-trainer")  # the single-card user's: uint8 + prepare
    assert fsdp[ALLOC].startswith("8.53 GiB (ranks 8.53, 8.53)") and ddp[ALLOC].startswith("9.47 GiB")
    # the one-card rows re-measured with one GPU visible: their case's batch
    assert single[ALLOC] == "9.31 GiB" and uint8[ALLOC] == "12.75 GiB"
    assert float(ddp[SCALING].split()[0]) == pytest.approx(0.77, abs=0.01)
    assert float(fsdp[SCALING].split()[0]) == pytest.approx(0.21, abs=0.01)
    assert fsdp[FIT].startswith("yes") and ddp[FIT].startswith("yes")
    assert uint8[FIT] == "yes (device 14.82 of 15.00 GiB)"
    assert "The emulated cards share one host (2 x NVIDIA H200)" in section


def test_the_load_cell_says_where_each_rank_loaded(build: SimpleNamespace) -> None:
    rows = _pair(build)
    rows[1].ranks.rank_loaded_on = ["cpu", "meta"]  # FSDP rank-0-only loading: rank 1 held no weight
    text = multigpu_table(build.run(rows))
    assert _table_row(text, "-2gpu-ddp")[LOAD] == "fp16, prepare off, loaded on cpu/meta"
    # a row stored before the field: said so, not guessed
    assert _table_row(text, "-trainer")[LOAD] == "fp16, prepare off, load not recorded"


def test_cpu_offload_is_labelled_and_each_ranks_host_ram_shown(build: SimpleNamespace) -> None:
    rows = _pair(build, strategy="fsdp")
    offload = _row(
        build,
        **{**POINT, **FSDP_READY, "num_gpus": 2, "strategy": "fsdp", "cpu_offload": True},
        **build.gpu(),
        **_ranks(3.0, cpu_peak_rss_gib=41.5, rank_cpu_peak_rss_gib=[41.5, 20.25]),
        params_on_in_training="cpu",
        tokens_per_s=1200.0,
    )
    text = multigpu_table(build.run([*rows, offload]))
    cells, plain = _table_row(text, "-2gpu-fsdp-offload"), _table_row(text, "-2gpu-fsdp")
    assert (cells[STRATEGY], plain[STRATEGY]) == ("fsdp + CPU offload", "fsdp")
    assert cells[HOST] == "41.50 GiB (ranks 41.50, 20.25)" and plain[HOST] == "-"
    # its one-card reference is the same one-card case: offload is how the work is spread
    assert cells[SCALING] == "0.60" and "CPU offload of the parameters" in text  # 1200 / (2 x 1000)
    # asked for, but the parameters trained from the GPU: the cell says so
    offload.precision.params_on_in_training = "cuda"
    cells = _table_row(multigpu_table(build.run([*rows, offload])), "-2gpu-fsdp-offload")
    assert cells[STRATEGY] == "fsdp + CPU offload (but parameters on cuda in training)"
