"""Load-only cases (the `weights` family) on the CPU with the tiny shape, in every weight type
bitsandbytes loads on the CPU (fp32/fp16/bf16 unquantized, int8, nf4/fp4 with and without double
quantization); the parameter counts of real architectures instantiated without weights."""

from __future__ import annotations

import pytest
import torch

from qlora_core.cases.case import LESSON_TARGET_MODULES, Case, CaseError
from qlora_core.measurement import memory
from qlora_core.measurement.result import Result
from qlora_core.models import SHAPES, load
from qlora_core.models.resolve import resolve_model
from qlora_core.process.request import RunOptions
from qlora_core.process.runner import run_case
from qlora_plugin.checks import assert_weights_consistent

LOAD = Case("tiny", quant_type="none", compute_dtype="fp32", load_only=True)
WEIGHT_TYPES: tuple[Case, ...] = (
    LOAD,
    LOAD.replace(compute_dtype="fp16"),
    LOAD.replace(compute_dtype="bf16"),
    LOAD.replace(quant_type="int8", compute_dtype="bf16"),
    *(
        LOAD.replace(quant_type=q, double_quant=dq, compute_dtype="bf16")
        for q in ("nf4", "fp4")
        for dq in (True, False)
    ),
)
TINY = SHAPES["tiny"]


def _loaded(case: Case) -> torch.nn.Module:
    return load.load_model(case, resolve_model("tiny", device="cpu").path, "cpu")


@pytest.mark.parametrize("case", WEIGHT_TYPES, ids=lambda c: c.id)
def test_every_weight_type_loads_and_is_counted(case: Case) -> None:
    model = _loaded(case)
    counted = memory.weight_bytes(model)
    assert memory.base_parameter_count(model) == TINY.total_params
    result = Result.for_case(case, "cpu")
    result.weights.weight_bytes, result.weights.total_params = counted.weight_bytes, TINY.total_params
    result.weights.quantized_params, result.weights.quant_stats_bytes = (
        counted.quantized_params,
        counted.quant_stats_bytes,
    )
    result.hardware.device = "cpu"
    assert_weights_consistent(result)
    if case.is_quantized:
        assert counted.quantized_params == TINY.linear_params
    else:
        assert counted.quantized_params == 0


def test_int8_counts_its_row_scales() -> None:
    """LLM.int8() stores one int8 per weight and one fp32 scale per output row (SCB)."""
    counted = memory.weight_bytes(_loaded(LOAD.replace(quant_type="int8", compute_dtype="bf16")))
    assert counted.quant_data_bytes == TINY.linear_params
    rows = TINY.num_layers * (2 * 128 + 2 * 64 + 2 * 384 + 128)  # q, o; k, v; gate, up; down
    assert counted.quant_stats_bytes == 4 * rows


def test_weights_check_fails_on_broken_counts() -> None:
    good = Result.for_case(LOAD, "cpu")
    good.weights.weight_bytes, good.weights.total_params, good.hardware.device = (
        4 * TINY.total_params,
        TINY.total_params,
        "cpu",
    )
    assert_weights_consistent(good)
    with pytest.raises(AssertionError, match="expected"):
        assert_weights_consistent(good.replaced(weight_bytes=2 * TINY.total_params))
    int8 = Result.for_case(LOAD.replace(quant_type="int8", compute_dtype="bf16"), "cpu")
    int8.weights.weight_bytes, int8.weights.total_params, int8.hardware.device = (
        2 * TINY.total_params,
        TINY.total_params,
        "cpu",
    )
    with pytest.raises(AssertionError, match="quantized"):
        assert_weights_consistent(int8)
    cuda = good.replaced(device="cuda", load_alloc_gib=0.0, load_nvml_gib=1.0)
    with pytest.raises(AssertionError, match="allocator holds"):
        assert_weights_consistent(cuda)


@pytest.mark.slow
def test_load_only_case_stops_after_the_load(tmp_path) -> None:
    result = run_case(
        LOAD.replace(quant_type="int8", compute_dtype="bf16"), RunOptions(profile="cpu"), tmp_path / "r.json"
    )
    assert result.status == "ok", result.reason
    assert result.weights.weight_bytes and result.weights.total_params == TINY.total_params
    assert result.memory.load_alloc_gib is not None and result.memory.cpu_peak_rss_gib is not None
    # No training stage ran: nothing of it is recorded as if it had.
    assert result.memory.prepare_alloc_gib is None and result.memory.lora_alloc_gib is None
    assert (
        result.weights.trainable_params is None
        and result.training.step_ms == []
        and result.memory.peak_alloc_gib is None
    )
    assert_weights_consistent(result)


def test_load_only_axis_rules() -> None:
    assert LOAD.id == "tiny-dense-fp32-b1-s512-load"
    assert LOAD.replace(quant_type="int8").id == "tiny-int8-fp32-b1-s512-load"
    assert Case("tiny").hash == Case("tiny", load_only=False).hash  # a later field: old hashes stay
    assert LOAD.hash != LOAD.replace(load_only=False, compute_dtype="bf16").hash
    assert Case("tiny", quant_type="int8").id == "tiny-int8-bf16-b1-s512"  # LoRA over 8-bit weights
    with pytest.raises(CaseError, match="fp32 weights only with load_only=True"):
        Case("tiny", quant_type="none", compute_dtype="fp32")
    with pytest.raises(CaseError, match="load_only"):
        Case("tiny", load_only="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", ["tiny", "llama-3.2-3b"])
def test_empty_weight_counts_match_the_architecture(shape: str) -> None:
    """peft counts the real architecture without weights: base = the published total (tied
    embeddings counted once), adapters = the hand count from the config."""
    row = memory.empty_weight_counts(shape, 16, LESSON_TARGET_MODULES)
    spec = SHAPES[shape]
    assert row["base_params"] == spec.total_params
    assert row["trainable_params"] == spec.lora_params(16, LESSON_TARGET_MODULES)
    assert row["total_params"] == spec.total_params + row["trainable_params"]


def test_empty_weight_counts_refuse_an_unknown_shape() -> None:
    with pytest.raises(Exception, match="known shapes"):
        memory.empty_weight_counts("no-such-shape", 16, LESSON_TARGET_MODULES)


@pytest.mark.gpu
def test_load_only_on_gpu_reads_allocator_and_nvml(gpu_required, tmp_path) -> None:
    for case in (LOAD, LOAD.replace(quant_type="int8", compute_dtype="bf16")):
        result = run_case(case, RunOptions(profile="h200"), tmp_path / f"{case.hash}.json")
        assert result.status == "ok", result.reason
        assert result.memory.load_peak_alloc_gib is not None and result.memory.load_nvml_gib is not None
        assert result.memory.load_nvml_gib > (result.memory.nvml_base_gib or 0.0)
        assert result.memory.nvml_peak_gib is None and result.memory.peak_alloc_gib is None
        assert_weights_consistent(result)


@pytest.mark.slow
def test_lora_trains_over_int8_weights_as_the_weights_family_plans_it(tmp_path) -> None:
    """INT8's training total: the CPU tier's weights family trains LoRA over LLM.int8() weights
    through the Trainer, for real (bitsandbytes' CPU int8 kernels), adapters only."""
    from qlora_core.cases.gpus import get_profile
    from qlora_core.cases.matrix import build_matrix
    from qlora_core.process.request import RunOptions
    from qlora_core.process.runner import run_case

    (case,) = [
        p.case
        for p in build_matrix(get_profile("cpu"))
        if p.case.quant_type == "int8" and not p.case.load_only
    ]
    result = run_case(case, RunOptions(profile="cpu", families="weights"), tmp_path / "r.json")
    assert result.status == "ok", result.reason
    assert (
        result.weights.quantized_params and result.weights.quant_stats_bytes
    )  # 8-bit weights with their row scales
    assert result.weights.trainable_params and result.weights.trainable_params < result.weights.total_params
    assert (
        len(result.training.losses) == case.warmup_steps + case.measured_steps
        and result.memory.cpu_peak_rss_gib
    )
