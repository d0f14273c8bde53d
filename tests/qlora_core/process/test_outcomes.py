"""outcomes: which exception gives which status, from exceptions the real libraries raise."""

from __future__ import annotations

from collections.abc import Callable

import bitsandbytes.functional as bnb_functional
import pytest
import torch

from qlora_core.cases.case import Case, CaseError
from qlora_core.cases.gpus import get_profile
from qlora_core.measurement.result import FINAL_STATUSES, STATUSES, Status
from qlora_core.models import ModelUnavailableError
from qlora_core.models.resolve import resolve_model
from qlora_core.process.outcomes import (
    GRAD_SCALER_BF16,
    RECOGNISED_REFUSALS,
    classify_exception,
    recognised_refusal,
)


def raised_by(action: Callable[[], object]) -> BaseException:
    """The exception `action` raises (the test fails if it raises none)."""
    with pytest.raises(BaseException) as info:
        action()
    return info.value


# -- recognised library refusals: each triggered for real on the CPU ------------------------------
REFUSALS: dict[str, Callable[[], object]] = {
    "torch-dtype-kernel": lambda: torch.linalg.cholesky(torch.eye(2, dtype=torch.float16)),
    "torch-backend-kernel": lambda: torch.ops.aten.cudnn_convolution(
        torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 1, 1), [0, 0], [1, 1], [1, 1], 1, False, False, False
    ),
    "torch-low-precision": lambda: torch.linalg.inv(torch.eye(2, dtype=torch.float16)),
    "bitsandbytes-blockwise-dtype": lambda: bnb_functional.quantize_4bit(torch.zeros(64, dtype=torch.int32)),
}


def unscale_bf16_gradients(device: str) -> None:
    """fp16's gradient scaler unscaling bf16 gradients, as accelerate's scaler meets the adapters
    TRL's SFTTrainer cast to bf16 (engines.hf)."""
    param = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16, device=device))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scaler = torch.amp.GradScaler(device)
    scaler.scale(param.float().sum()).backward()
    scaler.unscale_(optimizer)


# Refusals whose kernel exists only on CUDA: triggered for real by a gpu test; on the CPU the message
# the H200 gave (torch 2.11, the t4 profile's sft case) stands in.
GPU_REFUSALS: dict[str, Callable[[], object]] = {GRAD_SCALER_BF16: lambda: unscale_bf16_gradients("cuda")}
MEASURED_ON_GPU: dict[str, BaseException] = {
    GRAD_SCALER_BF16: NotImplementedError(
        "\"_amp_foreach_non_finite_check_and_unscale_cuda\" not implemented for 'BFloat16'"
    ),
}


def test_every_recognised_refusal_has_a_real_trigger_here():
    assert sorted(REFUSALS | GPU_REFUSALS) == sorted(r.name for r in RECOGNISED_REFUSALS)
    assert set(MEASURED_ON_GPU) == set(GPU_REFUSALS)


def assert_refusal(exc: BaseException, name: str) -> None:
    refusal = recognised_refusal(exc)
    assert refusal is not None and refusal.name == name, f"{type(exc).__name__}: {exc}"
    assert classify_exception(exc) is Status.UNSUPPORTED


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_library_refusal_is_unsupported(name: str):
    assert_refusal(raised_by(REFUSALS[name]), name)


@pytest.mark.parametrize("name", sorted(MEASURED_ON_GPU))
def test_a_refusal_measured_on_the_gpu_is_recognised_here(name: str):
    assert_refusal(MEASURED_ON_GPU[name], name)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(GPU_REFUSALS))
def test_gpu_library_refusal_is_unsupported(gpu_required, name: str):
    exc = raised_by(GPU_REFUSALS[name])
    assert_refusal(exc, name)
    assert str(exc) == str(MEASURED_ON_GPU[name])  # the stand-in is still torch's words


def test_the_scaler_refusal_is_specific_to_bf16_gradients_on_cuda():
    unscale_bf16_gradients("cpu")  # the CPU's unscale takes bf16: no trigger here
    # Half is the scaler's own dtype: a dtype refusal of another kernel, not this one.
    half = NotImplementedError(
        "\"_amp_foreach_non_finite_check_and_unscale_cuda\" not implemented for 'Half'"
    )
    refusal = recognised_refusal(half)
    assert refusal is not None and refusal.name == "torch-dtype-kernel"
    # The scaler rule comes first: the generic dtype rule would match its message too.
    names = [r.name for r in RECOGNISED_REFUSALS]
    assert names.index(GRAD_SCALER_BF16) < names.index("torch-dtype-kernel")


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("this configuration is not supported"),  # our words, or a library's unknown ones
        NotImplementedError("no kernel"),
        ValueError("Blockwise quantization is not supported"),
        # A known message under the wrong exception type is not the library's refusal either.
        KeyError("\"cholesky_cpu\" not implemented for 'Half'"),
    ],
)
def test_unrecognised_not_supported_messages_are_crashes(exc: BaseException):
    assert recognised_refusal(exc) is None
    assert classify_exception(exc) is Status.CRASHED


# -- our validation vs our bugs -----------------------------------------------------------------
def test_case_validation_is_config_error():
    exc = raised_by(lambda: Case("tiny", batch_size=0))
    assert isinstance(exc, CaseError)
    assert classify_exception(exc) is Status.CONFIG_ERROR
    assert classify_exception(raised_by(lambda: get_profile("v100"))) is Status.CONFIG_ERROR


@pytest.mark.parametrize("bug", [lambda: {}["key"], lambda: int("x"), lambda: len(3)])
def test_value_key_type_errors_from_our_code_are_crashes(bug: Callable[[], object]):
    exc = raised_by(bug)
    assert isinstance(exc, (KeyError, ValueError, TypeError))
    assert classify_exception(exc) is Status.CRASHED


def test_missing_model():
    exc = raised_by(lambda: resolve_model("llama-9b"))
    assert isinstance(exc, ModelUnavailableError)
    assert classify_exception(exc) is Status.MISSING_MODEL


# -- memory and CUDA ----------------------------------------------------------------------------
def test_cpu_allocator_failure_is_oom():
    exc = raised_by(lambda: torch.empty(1 << 50, dtype=torch.uint8))  # a petabyte: refused at once
    assert "DefaultCPUAllocator" in str(exc)
    assert classify_exception(exc) is Status.OOM


def test_torch_out_of_memory_error_is_oom():
    # The CUDA caching allocator's exception type (on the GPU: test_runner's memory-cap test).
    assert classify_exception(torch.OutOfMemoryError("CUDA out of memory.")) is Status.OOM


def test_cuda_errors():
    assert classify_exception(RuntimeError("CUDA error: an illegal memory access")) is Status.CUDA_ERROR
    assert classify_exception(RuntimeError("CUDA error: device-side assert triggered")) is Status.CUDA_ERROR
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None:
        assert classify_exception(accelerator_error("unspecified launch failure")) is Status.CUDA_ERROR


# -- what --resume reruns -----------------------------------------------------------------------
def test_final_statuses_keep_facts_and_rerun_failures():
    assert set(FINAL_STATUSES) == {"ok", "oom", "nan", "unsupported", "config_error"}
    rerun = set(STATUSES) - FINAL_STATUSES
    assert rerun == {"crashed", "timeout", "cuda_error", "missing_model"}
