"""Assertions the bench modules share, importable by name (`from qlora_plugin.checks import ...`).

Each checks a relation between measurements that a status of `ok` does not guarantee, so each
can fail on a broken measurement (tests/qlora_plugin/test_checks.py shows how).
"""

from __future__ import annotations

from typing import Any

from qlora_core.measurement.result import Result
from reports.gate.thresholds import Thresholds
from reports.gate.verdict import compare
from reports.run.frame import RunData

# NVML samples the device every few ms and can miss the last ~1% of a short-lived peak.
_NVML_SAMPLING_SLACK = 0.99
# The training peak holds at least what the model held after LoRA, up to allocator rounding.
_PEAK_VS_STAGE_SLACK = 0.999


def assert_memory_consistent(result: Result) -> None:
    """The memory figures of one case agree with each other.

    On CUDA: the training peak holds at least the model after LoRA, the reserved peak at least
    the allocated one, and the device (NVML, context included) at least the allocator's blocks.
    On the CPU: the process's peak RSS is at least its RSS after LoRA. For a 4-bit case, some
    parameters were counted as 4-bit and their quantization statistics were counted.
    """
    name = result.case_id
    if result.hardware.device == "cuda":
        figures = ("lora_alloc_gib", "peak_alloc_gib", "peak_reserved_gib", "nvml_peak_gib")
        missing = [f for f in figures if result.get_field(f) is None]
        assert not missing, f"{name}: not measured: {missing}"
        lora, peak, reserved, nvml = (result.get_field(f) for f in figures)
        assert peak >= lora * _PEAK_VS_STAGE_SLACK, (
            f"{name}: training peak {peak:.3f} GiB is below the"
            f" {lora:.3f} GiB held after LoRA: the peaks were not measured over training"
        )
        assert reserved >= peak, f"{name}: reserved peak {reserved:.3f} GiB < allocated peak {peak:.3f} GiB"
        assert nvml >= reserved * _NVML_SAMPLING_SLACK, (
            f"{name}: NVML saw {nvml:.3f} GiB, less than the allocator's {reserved:.3f} GiB reserved"
        )
    else:
        rss, lora_rss = result.memory.cpu_peak_rss_gib, result.memory.lora_alloc_gib
        assert rss is not None and lora_rss is not None, f"{name}: CPU memory not measured"
        assert rss >= lora_rss, (
            f"{name}: peak RSS {rss:.3f} GiB is below the RSS after LoRA"
            f" ({lora_rss:.3f} GiB): a unit or a reading is wrong"
        )
    weights = result.weights
    if result.case["quant_type"] != "none":
        assert weights.quantized_params, f"{name}: a 4-bit case with no parameter counted in 4-bit"
        assert weights.quant_stats_bytes, f"{name}: a 4-bit case without quantization statistics"
        assert weights.weight_bytes and weights.weight_bytes > weights.quant_stats_bytes, (
            f"{name}: weight bytes {weights.weight_bytes} do not include the statistics"
            f" ({weights.quant_stats_bytes} bytes)"
        )


_DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
# Buffers (rotary inv_freq) are counted in weight_bytes and not in the parameter count.
_BUFFER_SLACK = 0.01


def assert_weights_consistent(result: Result) -> None:
    """A load-only case counted its weights as its precision stores them.

    Unquantized: weight_bytes is the parameter count times the dtype's size (up to the buffers).
    Quantized: some parameters were counted in 8 or 4 bits, with their statistics, and the
    weights take fewer bytes than in the dtype they were loaded from. On CUDA: the allocator
    holds at least the counted bytes after the load, and NVML was read after it.
    """
    name = result.case_id
    case = result.case
    weights, memory = result.weights, result.memory
    assert weights.weight_bytes and weights.total_params, f"{name}: weight bytes or parameters not counted"
    dense = weights.total_params * _DTYPE_BYTES[case["compute_dtype"]]
    if case["quant_type"] == "none":
        assert abs(weights.weight_bytes - dense) <= _BUFFER_SLACK * dense, (
            f"{name}: {weights.weight_bytes} weight bytes for {weights.total_params} {case['compute_dtype']}"
            f" parameters (expected ~{dense})"
        )
    else:
        assert weights.quantized_params, f"{name}: a quantized case with no parameter counted as quantized"
        assert weights.quant_stats_bytes, f"{name}: a quantized case without its scaling statistics"
        assert weights.weight_bytes < dense, (
            f"{name}: quantized weights take {weights.weight_bytes} bytes, not less than {dense} unquantized"
        )
    if result.hardware.device == "cuda":
        assert memory.load_alloc_gib is not None and memory.load_nvml_gib is not None, (
            f"{name}: allocator or NVML not read after the load"
        )
        held = memory.load_alloc_gib * 2**30
        assert held >= weights.weight_bytes * (1 - _BUFFER_SLACK), (
            f"{name}: the allocator holds {held:.0f} bytes after the load, less than the"
            f" {weights.weight_bytes} counted weight bytes"
        )


def assert_adapters_only_train(result: Result) -> None:
    """LoRA trains some parameters, and fewer than the model has (the base stays frozen)."""
    trainable, total = result.weights.trainable_params, result.weights.total_params
    assert trainable and total, f"{result.case_id}: parameters not counted ({trainable} of {total})"
    assert 0 < trainable < total, (
        f"{result.case_id}: {trainable:,} of {total:,} parameters train: the base model is not frozen"
    )


def assert_baseline_reproduces_run(baseline: dict[str, Any], run: RunData) -> None:
    """A baseline just saved from `run` gates `run` itself as a pass, case by case.

    It fails when the stored baseline lost or changed a case, a status, a case hash or a metric.
    Noise is not its question (a run equals itself), so a case too noisy to gate is only listed.
    """
    report = compare(baseline, run.results, Thresholds(), allow_noisy=True)
    assert report.passed, "the saved baseline does not reproduce this run:\n  " + "\n  ".join(report.failures)


def assert_ranks_consistent(result: Result) -> None:
    """A multi-GPU row holds every rank's figures, and its own are theirs merged.

    Every rank ended ok and measured its peaks; the row's peak is the largest rank's (what each
    GPU must hold) and its sum their total; on CUDA each rank's reserved peak is at least its
    allocated one. (A rank's training peak may be below what it held after LoRA under FSDP: each
    rank loads the whole 4-bit model, and FSDP frees all but its shard.)
    """
    name, ranks, cuda = result.case_id, result.ranks, result.hardware.device == "cuda"
    world, asked = ranks.world_size, result.case["num_gpus"]
    assert world is not None and world == asked, f"{name}: {world} ranks merged, the case asks for {asked}"
    assert ranks.rank_statuses == ["ok"] * world, f"{name}: rank outcomes {ranks.rank_statuses}"
    assert len(ranks.rank_step_ms) == world and all(ranks.rank_step_ms), f"{name}: a rank timed no step"
    peaks = ranks.rank_peak_alloc_gib if cuda else ranks.rank_cpu_peak_rss_gib
    measured = [p for p in peaks if p is not None]
    assert len(peaks) == len(measured) == world, f"{name}: per-rank peaks not measured: {peaks}"
    merged = result.memory.peak_alloc_gib if cuda else result.memory.cpu_peak_rss_gib
    assert merged == max(measured), f"{name}: row peak {merged} is not the largest rank's {peaks}"
    if cuda:
        for rank, (alloc, reserved) in enumerate(zip(measured, ranks.rank_peak_reserved_gib, strict=True)):
            assert reserved is not None and reserved >= alloc, f"{name}: rank {rank} reserved < allocated"
        assert ranks.peak_alloc_gib_sum == sum(measured), f"{name}: peak sum is not the ranks' total"
