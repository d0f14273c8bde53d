"""qlora_core.measurement.result: the Result's groups flatten to the stored columns, in the stored order."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest

from qlora_core.cases.case import Case
from qlora_core.measurement.result import NEEDED_OF, RESULT_FIELD_TYPES, RESULT_FIELDS, Result, unknown_fields
from reports.run.folder import migrate_result_row

REFERENCE = Path(__file__).resolve().parents[3] / "reports" / "reference"

# The columns of a stored Result (results.jsonl, results.csv/parquet, baselines), in order, as
# they were when the fields were one flat record: grouping them must not move or rename one.
RESULT_COLUMNS = (
    "case_id",
    "case_hash",
    "profile",
    "case",
    "families",
    "overrides",
    "repeat",
    "status",
    "reason",
    "traceback",
    "schema_version",
    "started_at",
    "finished_at",
    "wall_s",
    "start_s",
    "warm_spare",
    "spare_import_s",
    "import_s",
    "create_s",
    "load_s",
    "prepare_s",
    "warmup_s",
    "train_s",
    "profile_s",
    "eval_s",
    "device",
    "gpu_name",
    "gpu_capability",
    "gpu_total_gib",
    "gpus_visible",
    "context_gib",
    "side_by_side",
    "lane_share_gib",
    "lane_cap_gib",
    "lane_rerun_reason",
    "lane_rerun_share_gib",
    "torch_threads",
    "emulated",
    "emulated_on",
    "memory_cap_gib",
    "bf16_native",
    "bf16_torch_supported",
    "python_version",
    "torch_version",
    "cuda_version",
    "driver_version",
    "transformers_version",
    "peft_version",
    "bitsandbytes_version",
    "accelerate_version",
    "trl_version",
    "total_params",
    "trainable_params",
    "trainable_dtypes",
    "trainable_bytes",
    "optimizer_state_bytes",
    "quantized_params",
    "weight_bytes",
    "quant_data_bytes",
    "quant_stats_bytes",
    "footprint_bytes",
    "computed_weight_bytes",
    "load_alloc_gib",
    "load_reserved_gib",
    "prepare_alloc_gib",
    "prepare_reserved_gib",
    "lora_alloc_gib",
    "lora_reserved_gib",
    "load_peak_alloc_gib",
    "load_peak_reserved_gib",
    "load_nvml_gib",
    "peak_alloc_gib",
    "peak_reserved_gib",
    "nvml_base_gib",
    "nvml_peak_gib",
    "nvml_scope",
    "nvml_own_peak_gib",
    "cpu_peak_rss_gib",
    "tokens_per_step",
    "step_ms",
    "losses",
    "grad_norms",
    "step_ms_median",
    "step_ms_spread",
    "tokens_per_s",
    "step_ms_rel_iqr",
    "stop_reason",
    "kernel_ms_per_step",
    "kernels_per_step",
    "comm_ms_per_step",
    "gpu_busy",
    "host_bound",
    "profiled_steps",
    "slowdown_ms_per_step",
    "flops_per_step",
    "mfu",
    "mfu_kernel",
    "first_loss",
    "final_loss",
    "first_nonfinite_step",
    "ppl_before",
    "ppl_after",
    "autocast",
    "grad_scaler",
    "scaler_skipped_steps",
    "scaler_final_scale",
    "trained_dtypes",
    "params_on_in_training",
    "world_size",
    "failed_rank",
    "rank_statuses",
    "rank_peak_alloc_gib",
    "rank_peak_reserved_gib",
    "rank_nvml_peak_gib",
    "rank_cpu_peak_rss_gib",
    "rank_step_ms",
    "loaded_on",
    "rank_loaded_on",
    "peak_alloc_gib_sum",
    "peak_reserved_gib_sum",
    "nvml_peak_gib_sum",
    "needed_status",
    "needed_on",
    "needed_peak_alloc_gib",
    "needed_peak_reserved_gib",
    "needed_nvml_peak_gib",
    "needed_nvml_base_gib",
    "needed_load_alloc_gib",
    "needed_prepare_alloc_gib",
    "needed_lora_alloc_gib",
    "needed_optimizer_state_bytes",
    "needed_weight_bytes",
)
GROUPS = ("timing", "hardware", "environment", "weights", "memory")
GROUPS += ("training", "quality", "precision", "ranks", "needed")


def filled() -> Result:
    """A Result whose every field holds a value of its type that no other field holds."""
    values: dict[str, object] = {}
    for i, (name, hint) in enumerate(RESULT_FIELD_TYPES.items()):
        text = str(hint)
        if name == "case":
            values[name] = Case("tiny").to_dict()
        elif text.startswith("list[list"):
            values[name] = [[float(i)]]
        elif text.startswith("list[str"):
            values[name] = [f"{name}-0"]
        elif text.startswith("list"):
            values[name] = [float(i), None] if "None" in text else [float(i)]
        elif "bool" in text:
            values[name] = i % 2 == 0
        elif "int" in text:
            values[name] = i
        elif "float" in text:
            values[name] = i + 0.5
        else:
            values[name] = name
    return Result.from_dict(values)


def test_the_flat_columns_are_the_stored_ones_in_the_stored_order():
    assert RESULT_FIELDS == RESULT_COLUMNS
    assert list(Result.for_case(Case("tiny"), "cpu").flat()) == list(RESULT_COLUMNS)
    assert list(json.loads(filled().to_json())) == list(RESULT_COLUMNS)
    assert list(RESULT_FIELD_TYPES) == list(RESULT_COLUMNS)
    row = filled().row()
    assert list(row)[: len(RESULT_COLUMNS) - 1] == [c for c in RESULT_COLUMNS if c != "case"]


def test_every_measurement_lives_in_one_group_under_its_column_name():
    hints = typing.get_type_hints(Result)
    assert tuple(name for name in hints if dataclasses.is_dataclass(hints[name])) == GROUPS
    grouped = [f.name for group in GROUPS for f in dataclasses.fields(hints[group])]
    top = [name for name in hints if name not in GROUPS]
    assert top + grouped == list(RESULT_COLUMNS)  # the groups follow the identity, in column order
    result = filled()
    assert result.memory.peak_alloc_gib == result.get_field("peak_alloc_gib") is not None
    assert result.needed.needed_peak_alloc_gib == result.get_field("needed_peak_alloc_gib")
    assert result.hardware.device == result.get_field("device") and result.case_id == result.get_field(
        "case_id"
    )


def test_flat_to_nested_to_flat_is_the_same_record():
    flat = filled().flat()
    distinct = [repr(v) for v in flat.values() if not isinstance(v, bool)]
    assert len(set(distinct)) == len(distinct)  # each field (but the bools) its own value: none swapped
    assert Result.from_dict(flat).flat() == flat
    assert Result.from_dict(json.loads(filled().to_json())).to_json() == filled().to_json()


def test_a_stored_reference_row_reads_and_writes_back_byte_for_byte():
    lines = [
        line
        for path in sorted(REFERENCE.glob("*/results.jsonl"))
        for line in path.read_text().splitlines()
        if '"case_hash"' in line  # the folders of other measurements hold other rows
    ]
    assert len(lines) > 50
    for line in lines:
        data = json.loads(line)
        if data.get("schema_version") == Result.for_case(Case("tiny"), "cpu").schema_version:
            assert Result.from_dict(data).to_json() == line
        else:  # an older row: migrated first (reports.run.folder), then stored as this version
            Result.from_dict(migrate_result_row(data))


def test_fields_are_set_and_read_by_column_name_and_an_unknown_one_is_refused():
    result = Result.for_case(Case("tiny"), "cpu")
    result.set_fields({"peak_alloc_gib": 3.0, "losses": [2.0], "status": "ok", "needed_on": "cpu"})
    assert (result.memory.peak_alloc_gib, result.training.losses, result.status) == (3.0, [2.0], "ok")
    assert result.needed.needed_on == "cpu"
    with pytest.raises(AttributeError, match="peak_gib"):
        result.set_fields({"peak_gib": 1.0})
    with pytest.raises(AttributeError, match="timing"):
        result.get_field("timing")  # a group is not a column
    with pytest.raises(ValueError, match="not a field of Result: peak_gib"):
        Result.from_dict({**result.flat(), "peak_gib": 1.0})
    assert unknown_fields({"peak_gib": 1, "wall_s": 2, "memory": 3}) == ["peak_gib", "memory"]
    with pytest.raises(AttributeError):
        result.peak_alloc_gib = 1.0  # type: ignore[attr-defined]  # a column at the wrong level


def test_a_replaced_copy_shares_no_group_with_its_original():
    result = Result.for_case(Case("tiny"), "cpu")
    copy = result.replaced(peak_alloc_gib=2.0, repeat=1)
    copy.training.losses.append(1.0)
    assert (copy.memory.peak_alloc_gib, copy.repeat) == (2.0, 1)
    assert (result.memory.peak_alloc_gib, result.repeat, result.training.losses) == (None, 0, [])


def test_needed_of_maps_each_needed_column_to_the_measured_one():
    measured = ["peak_alloc_gib", "peak_reserved_gib", "nvml_peak_gib", "nvml_base_gib", "load_alloc_gib"]
    measured += ["prepare_alloc_gib", "lora_alloc_gib", "optimizer_state_bytes", "weight_bytes"]
    assert NEEDED_OF == {f"needed_{name}": name for name in measured}
    assert set(NEEDED_OF.values()) <= set(RESULT_COLUMNS)
