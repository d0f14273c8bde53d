"""run_case end to end on the CPU (real bitsandbytes 4-bit kernels, real models, real text): ok,
nan, config_error, missing_model, and oom under a memory cap on the GPU. Faults (kills, hangs,
crashes, interrupts) and their reruns: test_faults.py; exception classification: test_outcomes.py."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
from pathlib import Path

import bitsandbytes.functional as bnb_functional
import pytest
import torch

from qlora_core.cases.case import LESSON_TARGET_MODULES, Case, CaseError
from qlora_core.cases.gpus import get_profile
from qlora_core.cases.matrix import build_matrix
from qlora_core.measurement.memory import quant_state_bytes
from qlora_core.models import REAL_MODEL, SHAPES
from qlora_core.process.request import RunOptions
from qlora_core.process.runner import run_case

CPU = RunOptions(profile="cpu", timeout_s=600)
# bitsandbytes' layout: per 64-weight block an fp32 absmax (0.5 bit/param); with double
# quantization an 8-bit absmax (0.125) plus an fp32 absmax per 256 blocks (32/16384).
DQ_SAVING_BITS = 32 / 64 - (8 / 64 + 32 / (64 * 256))


def dq_saving_bits(rows: int, cols: int) -> float:
    """Bits per parameter that double quantization saves on one real NF4-quantized weight."""
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    _, plain = bnb_functional.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=False)
    _, nested = bnb_functional.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=True)
    return (quant_state_bytes(plain) - quant_state_bytes(nested)) * 8 / weight.numel()


def test_dq_saving_bits_match_bitsandbytes_layout():
    """The layout arithmetic above against what bitsandbytes stores for a large weight (where
    the nested code table and offset, 1 KiB per weight, are negligible)."""
    assert dq_saving_bits(2048, 2048) == pytest.approx(DQ_SAVING_BITS, rel=0.01)


def test_dq_saving_check_fails_where_the_layout_arithmetic_does_not_apply():
    """The check above can fail: on a 64x64 weight the per-weight tables outweigh the saving."""
    measured = dq_saving_bits(64, 64)
    assert measured < 0
    assert measured != pytest.approx(DQ_SAVING_BITS, rel=0.01)


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """The tiny shape, NF4 with and without double quantization, trained for real."""
    out = tmp_path_factory.mktemp("tiny")
    base = Case("tiny", seq_len=64, batch_size=2, warmup_steps=1, measured_steps=3)
    return (
        run_case(base, CPU, out / "dq.json"),
        run_case(base.replace(double_quant=False), CPU, out / "nodq.json"),
    )


def test_tiny_runs_ok_with_real_numbers(tiny_pair):
    dq, _ = tiny_pair
    assert dq.status == "ok", dq.reason
    assert (
        dq.hardware.device == "cpu" and dq.environment.torch_version and dq.environment.bitsandbytes_version
    )
    assert dq.weights.trainable_params == SHAPES["tiny"].lora_params(16, LESSON_TARGET_MODULES)
    assert dq.weights.trainable_dtypes == "float32"  # peft autocasts adapters to fp32 by default
    assert dq.weights.trainable_bytes == 4 * dq.weights.trainable_params
    assert (
        dq.weights.optimizer_state_bytes == 2 * dq.weights.trainable_bytes + 4 * 28
    )  # AdamW: 2 moments + steps
    assert dq.weights.quantized_params == SHAPES["tiny"].linear_params
    assert len(dq.training.step_ms) == 3 and len(dq.training.losses) == 4
    assert all(math.isfinite(x) for x in dq.training.losses + dq.training.grad_norms)
    assert dq.training.tokens_per_s == pytest.approx(128 / (dq.training.step_ms_median / 1000))
    assert dq.memory.cpu_peak_rss_gib > dq.memory.load_alloc_gib * 0.5 > 0
    # get_memory_footprint does not see the quantization statistics; our count does.
    assert dq.weights.weight_bytes - dq.weights.footprint_bytes == pytest.approx(
        dq.weights.quant_stats_bytes, rel=0.05
    )


def test_tiny_double_quant_saves_what_the_layout_predicts(tiny_pair):
    """Exact for small layers too, where each weight's nested 256-entry fp32 code table (1 KiB)
    and offset outweigh the absmax saving: the prediction counts them."""
    dq, nodq = tiny_pair
    s = SHAPES["tiny"]
    head_dim = s.head_dim or s.hidden_size // s.num_heads
    h, i = s.hidden_size, s.intermediate_size
    shapes = [
        (h, s.num_heads * head_dim),
        (h, s.num_kv_heads * head_dim),
        (h, s.num_kv_heads * head_dim),
        (s.num_heads * head_dim, h),
        (h, i),
        (h, i),
        (i, h),
    ] * s.num_layers
    saving = 0
    for a, b in shapes:
        blocks = math.ceil(a * b / 64)
        saving += 4 * blocks - (blocks + 4 * math.ceil(blocks / 256) + 256 * 4 + 4)
    assert nodq.weights.quant_stats_bytes - dq.weights.quant_stats_bytes == saving
    assert nodq.weights.quant_data_bytes == dq.weights.quant_data_bytes


@pytest.mark.slow
def test_real_model_nf4_dq_trains_on_real_text(tmp_path):
    # fp32 compute: on a CPU without bf16 instructions a bf16 step of the real model takes ~37 s
    # (qlora_core.cases.gpus.cpu_native_dtypes); the double-quant saving and the falling loss are the same.
    case = Case(
        REAL_MODEL,
        compute_dtype="fp32",
        batch_size=2,
        seq_len=64,
        warmup_steps=0,
        measured_steps=20,
        data="text",
    )
    dq = run_case(case, CPU, tmp_path / "dq.json")
    nodq = run_case(case.replace(double_quant=False, measured_steps=1), CPU, tmp_path / "nodq.json")
    assert dq.status == "ok", dq.reason
    assert nodq.status == "ok", nodq.reason
    assert (
        dq.weights.trainable_params
        == SHAPES["smollm2-135m"].lora_params(16, LESSON_TARGET_MODULES)
        == 4_884_480
    )
    assert len(dq.training.losses) == 20 and all(math.isfinite(x) for x in dq.training.losses)
    assert sum(dq.training.losses[-5:]) < sum(dq.training.losses[:5]), (
        dq.training.losses
    )  # training loss falls
    assert dq.quality.ppl_after < dq.quality.ppl_before  # and so does held-out perplexity
    saved_bits = (
        (nodq.weights.quant_stats_bytes - dq.weights.quant_stats_bytes) * 8 / dq.weights.quantized_params
    )
    assert saved_bits == pytest.approx(DQ_SAVING_BITS, rel=0.10)


@pytest.mark.slow
def test_a_stability_case_trains_its_fixed_steps_where_pacing_is_asked_for(tmp_path):
    # The CPU tier's stability case on the tiny shape, run with adaptive pacing asked for (as on
    # CUDA by default): a case on text keeps exactly its warm-up + measured steps.
    planned = build_matrix(get_profile("cpu"), "default")
    stability = next(p.case for p in planned if "stability" in p.families).replace(model="tiny")
    paced = dataclasses.replace(CPU, adaptive_steps=True)
    result = run_case(stability, paced, tmp_path / "text.json")
    assert result.status == "ok", result.reason
    steps = stability.warmup_steps + stability.measured_steps
    assert (result.training.stop_reason, len(result.training.losses), len(result.training.step_ms)) == (
        "fixed",
        steps,
        stability.measured_steps,
    )
    assert result.training.tokens_per_step == stability.tokens_per_step and not result.training.profiled_steps
    # Its synthetic twin is paced: it stops for a reason of the step times, not at "fixed".
    twin = run_case(stability.replace(data="synthetic"), paced, tmp_path / "synthetic.json")
    assert twin.status == "ok", twin.reason
    assert twin.training.stop_reason in ("target", "spread", "budget", "cap")


def test_nan_from_a_huge_learning_rate_is_recorded(tmp_path):
    # fp16: under bf16 autocast the tiny model saturates to a uniform loss instead of NaN.
    case = Case("tiny", seq_len=64, lr=1e5, measured_steps=6, compute_dtype="fp16")
    result = run_case(case, CPU, tmp_path / "r.json")
    assert result.status == "nan", result.reason
    assert result.training.first_nonfinite_step is not None
    assert len(result.training.losses) == result.training.first_nonfinite_step + 1  # stopped at the bad step
    assert not math.isfinite(result.training.losses[-1]) or not math.isfinite(result.training.grad_norms[-1])


def test_config_error_and_missing_model(tmp_path):
    bad_target = run_case(Case("tiny", seq_len=64, target_modules=("nope_proj",)), CPU, tmp_path / "a.json")
    assert bad_target.status == "config_error"
    assert "nope_proj" in bad_target.reason and "q_proj" in bad_target.reason  # names what exists
    assert "CaseError" in bad_target.reason and bad_target.weights.trainable_params is None
    missing = run_case(Case(str(tmp_path / "no-such-model"), seq_len=64), CPU, tmp_path / "b.json")
    assert missing.status == "missing_model"
    assert "no-such-model" in missing.reason


SFT_FP16 = Case("tiny", seq_len=64, measured_steps=2, compute_dtype="fp16", engine="sft")
TRL_CAST = "TRL's SFTTrainer cast the trainable parameters float32 -> bfloat16 at init"


@pytest.mark.slow
def test_an_sft_fp16_row_records_trls_cast_of_the_adapters(tmp_path):
    # On the CPU accelerate gives fp16 no scaler: the bf16 adapters train (on a GPU: below).
    result = run_case(SFT_FP16, CPU, tmp_path / "r.json")
    assert result.status == "ok", result.reason
    assert (result.weights.trainable_dtypes, result.precision.trained_dtypes) == ("float32", "bfloat16")
    assert (result.precision.autocast, result.precision.grad_scaler) == ("none", False)
    assert result.environment.trl_version == importlib.metadata.version("trl")


@pytest.mark.gpu
def test_sft_fp16_on_a_gpu_is_unsupported_naming_trls_cast(gpu_required, tmp_path):
    """The t4 profile's fp16 sft case: the scaler refuses the adapters TRL cast to bf16."""
    from qlora_core.process.outcomes import GRAD_SCALER_BF16, RECOGNISED_REFUSALS

    result = run_case(SFT_FP16, RunOptions(profile="t4"), tmp_path / "r.json")
    assert result.status == "unsupported", result.reason
    why = next(r.why for r in RECOGNISED_REFUSALS if r.name == GRAD_SCALER_BF16)
    assert result.reason.startswith(f"training: {why}: NotImplementedError: {TRL_CAST}"), result.reason
    assert "not implemented for 'BFloat16'" in result.reason
    # What training was set up with, kept though no step finished.
    assert (result.precision.autocast, result.precision.grad_scaler) == ("fp16", True)
    assert (result.weights.trainable_dtypes, result.precision.trained_dtypes) == ("float32", "bfloat16")
    assert result.training.losses == [] and result.weights.optimizer_state_bytes is None


@pytest.mark.gpu
def test_oom_forced_by_a_small_memory_cap(gpu_required, tmp_path):
    options = RunOptions(profile="h200", timeout_s=600, memory_cap_gib=0.5)
    result = run_case(Case("llama-3.2-3b", seq_len=512), options, tmp_path / "r.json")
    assert result.status == "oom", result.reason
    assert result.hardware.memory_cap_gib == 0.5


@pytest.mark.gpu
def test_gpu_case_measures_every_stage(gpu_required, tmp_path):
    result = run_case(
        Case("tiny", seq_len=64, measured_steps=3), RunOptions(profile="h200"), tmp_path / "r.json"
    )
    assert result.status == "ok", result.reason
    assert result.hardware.device == "cuda" and result.hardware.gpu_name
    for name in (
        "load_alloc_gib",
        "prepare_alloc_gib",
        "lora_alloc_gib",
        "peak_alloc_gib",
        "peak_reserved_gib",
        "nvml_peak_gib",
        "nvml_base_gib",
    ):
        assert result.get_field(name) is not None, name
    assert result.memory.nvml_peak_gib > result.memory.nvml_base_gib
    assert result.hardware.gpus_visible == 1  # pinned, however many GPUs the runner sees (child_env)


def test_result_files_are_complete_json(tmp_path, tiny_pair):
    for result in tiny_pair:
        assert result.case_hash and result.finished_at and result.timing.wall_s > 0
    assert not list(Path(tmp_path).glob("*.tmp"))


def test_a_bad_repeat_index_is_refused_before_any_child_starts(tmp_path: Path) -> None:
    with pytest.raises(CaseError, match=r"repeat=-1 must be an integer >= 0"):
        run_case(Case("tiny"), RunOptions(repeat=-1), tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "r.log").exists()


@pytest.mark.parametrize(
    ("visible", "one_gpu_child"),
    [(None, "0"), ("0,1", "0"), ("1,0", "1"), ("GPU-aaaa,GPU-bbbb", "GPU-aaaa"), ("", "")],
)
def test_a_one_gpu_child_is_shown_one_gpu(monkeypatch, visible, one_gpu_child) -> None:
    """Shown two GPUs, transformers' Trainer trains 2 x the case's batch a step (n_gpu): a one-GPU
    case's child sees the first GPU its runner sees; a multi-GPU case's launcher sees them all."""
    from qlora_core.process.request import child_env

    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert child_env()["CUDA_VISIBLE_DEVICES"] == one_gpu_child
    assert child_env(num_gpus=2).get("CUDA_VISIBLE_DEVICES") == visible


def test_a_timeout_signals_the_suites_own_processes_for_their_stacks_not_the_launcher():
    from qlora_core.process.runner import _runs_module_of_the_suite

    python = "/usr/bin/python3"
    assert _runs_module_of_the_suite([python, "-m", "qlora_core.process.child", "r.request"])
    assert _runs_module_of_the_suite([python, "-u", "-m", "qlora_core.process.rank", "r.request"])
    # accelerate's launcher names the rank module as its argument; the signal would end it
    launcher = [
        python,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "c.json",
        "-m",
        "qlora_core.process.rank",
    ]
    assert not _runs_module_of_the_suite(launcher)
    assert not _runs_module_of_the_suite([python, "script.py"]) and not _runs_module_of_the_suite(
        [python, "-m"]
    )
