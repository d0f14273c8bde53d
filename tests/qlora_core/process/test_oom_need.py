"""The uncapped rerun of an OOM (`qlora_core.process.oom_need`): when it is due, and a real one end to end.

The CPU has no cap, so the end-to-end test makes the capped run OOM through the one-shot fault
(`RunOptions.inject_fault="oom@training"`), which fires in the first run only: the rerun is clean.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlora_core.cases.case import Case
from qlora_core.engines.pacing import MEMORY_ONLY_STEPS
from qlora_core.measurement.result import NEEDED_OF, RESULT_FIELDS, Result, read_result
from qlora_core.process.oom_need import (
    fold_need,
    measure_need,
    run_case_measuring_need,
    uncapped_file_name,
    uncapped_options,
    why_no_rerun,
)
from qlora_core.process.request import RunOptions

TINY = Case("tiny", seq_len=64, batch_size=2, warmup_steps=1, measured_steps=2)
CPU_OOM = RunOptions(profile="cpu", timeout_s=600, inject_fault="oom@training")


def capped_oom(**changes: object) -> Result:
    """A row as an emulated T4 on an H200 writes it when training runs out of memory."""
    row = Result.for_case(TINY, "t4")
    row.status, row.hardware.memory_cap_gib, row.hardware.gpu_total_gib, row.hardware.emulated = (
        "oom",
        14.5,
        139.8,
        True,
    )
    row.set_fields(changes)
    return row


def test_an_oom_under_a_cap_the_host_exceeds_is_rerun() -> None:
    assert why_no_rerun(capped_oom()) is None


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"status": "ok"}, "status ok, not oom"),
        ({"status": "crashed"}, "status crashed, not oom"),
        ({"memory_cap_gib": None}, "without a memory cap"),  # the CPU, or a real T4
        ({"gpu_total_gib": 14.5}, "no more memory than the cap"),
        ({"needed_status": "ok", "needed_on": "NVIDIA H200"}, "already rerun"),  # --resume
        ({"computed_weight_bytes": 137_953_296_896}, "computed weight bytes"),  # 16-bit 70B
    ],
)
def test_no_rerun_where_it_could_say_nothing_new(changes: dict[str, object], why: str) -> None:
    assert why in (why_no_rerun(capped_oom(**changes)) or "<rerun due>")


def test_the_rerun_options_drop_the_cap_the_pacing_and_the_fault() -> None:
    capped = RunOptions(profile="t4", memory_cap_gib=3.0, inject_fault="oom@training", repeat=2)
    rerun = uncapped_options(capped)
    assert (rerun.uncapped, rerun.memory_cap_gib, rerun.adaptive_steps, rerun.inject_fault) == (
        True,
        None,
        False,
        "",
    )
    assert (rerun.profile, rerun.repeat) == ("t4", 2)


def test_needed_fields_are_named_as_the_other_branches_read_them() -> None:
    shared = {
        "needed_status",
        "needed_on",
        "needed_peak_alloc_gib",
        "needed_peak_reserved_gib",
        "needed_nvml_peak_gib",
        "needed_load_alloc_gib",
        "needed_prepare_alloc_gib",
        "needed_lora_alloc_gib",
        "needed_optimizer_state_bytes",
    }
    assert shared <= set(RESULT_FIELDS)
    assert all(measured in RESULT_FIELDS for measured in NEEDED_OF.values())


def test_fold_copies_the_reruns_memory_and_keeps_the_capped_status() -> None:
    capped = capped_oom()
    uncapped = Result.for_case(TINY, "t4")
    uncapped.status, uncapped.hardware.gpu_name = "ok", "NVIDIA H200"
    uncapped.memory.peak_alloc_gib, uncapped.weights.optimizer_state_bytes, uncapped.memory.nvml_peak_gib = (
        16.2,
        123,
        18.0,
    )
    fold_need(capped, uncapped)
    assert (capped.status, capped.needed.needed_status, capped.needed.needed_on) == (
        "oom",
        "ok",
        "NVIDIA H200",
    )
    assert (capped.needed.needed_peak_alloc_gib, capped.needed.needed_optimizer_state_bytes) == (16.2, 123)
    assert capped.memory.peak_alloc_gib is None  # the capped run's own fields are untouched


@pytest.mark.slow
def test_a_capped_oom_rerun_uncapped_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "cases" / "case.json"
    capped = run_case_measuring_need(TINY, CPU_OOM, path)
    # On the CPU there is no cap: the production path records the OOM and leaves it.
    assert capped.status == "oom" and "injected fault oom@training" in capped.reason
    assert capped.needed.needed_status is None
    assert not (path.parent / uncapped_file_name(TINY.hash)).exists()

    uncapped = measure_need(TINY, CPU_OOM, capped, path)  # what the production path runs when due
    assert uncapped.status == "ok", uncapped.reason
    assert uncapped.hardware.memory_cap_gib is None and uncapped.training.stop_reason == "fixed"
    # Memory only: MEMORY_ONLY_STEPS steps, whatever the case's own (step >= 2: optimizer states).
    assert len(uncapped.training.losses) == len(uncapped.training.step_ms) == MEMORY_ONLY_STEPS
    assert capped.status == "oom"
    assert (capped.needed.needed_status, capped.needed.needed_on) == ("ok", "cpu")
    for needed, measured in NEEDED_OF.items():
        assert capped.get_field(needed) == uncapped.get_field(measured), needed
    assert capped.needed.needed_optimizer_state_bytes and capped.needed.needed_optimizer_state_bytes > 0
    assert capped.needed.needed_load_alloc_gib and capped.needed.needed_lora_alloc_gib
    # Nothing measured is lost: the rerun's whole Result and log beside the case's own file,
    # and the case's own file holds the folded row.
    stored = path.parent / uncapped_file_name(TINY.hash)
    assert read_result(stored).training.losses == uncapped.training.losses
    assert stored.with_suffix(".log").exists()
    assert json.loads(path.read_text())["needed_status"] == "ok"
    assert why_no_rerun(read_result(path)) is not None  # --resume: not rerun again


@pytest.mark.gpu
def test_an_emulated_oom_records_what_it_needed(gpu_required, tmp_path: Path) -> None:
    """A T4 profile capped at 0.5 GiB on the host GPU: a 3B case OOMs there; its uncapped rerun
    on the host runs and records a peak above the cap."""
    options = RunOptions(profile="t4", timeout_s=600, memory_cap_gib=0.5)
    row = run_case_measuring_need(Case("llama-3.2-3b", seq_len=512), options, tmp_path / "r.json")
    assert row.status == "oom" and row.hardware.memory_cap_gib == 0.5, row.reason
    assert row.needed.needed_status == "ok" and row.needed.needed_on
    assert (
        row.needed.needed_peak_alloc_gib is not None
        and row.needed.needed_peak_alloc_gib > row.hardware.memory_cap_gib
    )
    assert row.needed.needed_nvml_peak_gib is not None and row.needed.needed_optimizer_state_bytes
    rerun = read_result(tmp_path / uncapped_file_name(row.case_hash))
    assert rerun.hardware.memory_cap_gib is None and rerun.training.profiled_steps in (None, 0)
