"""The sizes of the matrix for each kind of machine (`Tier`), the engines its families train
through, and the compute dtypes a profile runs: the inputs `qlora_core.cases.matrix` builds cases from.

On the CPU, half precision is planned only where the CPU multiplies it at speed
(`gpus.cpu_native_dtypes`): elsewhere torch's scalar fallback takes ~37 s per step of the real
model, and the CPU tier's twenty text cases would take hours. There the real model's text
cases compute in fp32 (quality and engine compare quantization and engines, not dtypes) and the
half-precision stability and nan rows are not planned (`cpu_text_note` says so in the run).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from qlora_core.cases.case import ComputeDtype, Engine
from qlora_core.cases.gpus import ALL_CPU_DTYPES, HALF_DTYPES, GpuProfile
from qlora_core.models import REAL_MODEL

USERS_ENGINE: Engine = "trainer"
"""The engine of the families the memory and speed claims read (see the module docstring)."""
KERNEL_ENGINE: Engine = "loop"
"""The engine of the families that compare numerics on text (quality, stability)."""
LADDER_START_LR = 2e-4
STABILITY_LRS: tuple[float, ...] = (1e-4, 2e-4, 1e-3)
NAN_REMEDY_LR = 1e-4
"""The lesson's "Reduce to 1e-4"."""
NAN_FAILURE_LR = 1e-1
"""The default tier's high rate: fp16 went non-finite there on the real model on the CPU (loop,
step 9 of 20) while bf16 stayed finite; the full grid brackets it on either side."""
NAN_LRS: tuple[float, ...] = (NAN_REMEDY_LR, 1e-3, 1e-2, NAN_FAILURE_LR, 1.0)
"""The full tier's grid: four decades from the lesson's rate to 1.0."""


@dataclass(frozen=True)
class Tier:
    """Sizes of the matrix for one kind of machine."""

    models: tuple[str, ...]
    primary: str
    ladder_model: str
    ref_batch: int
    ref_seq: int
    sweep_batches: tuple[int, ...]
    sweep_seqs: tuple[int, ...]
    default_sweep_batches: tuple[int, ...]
    default_sweep_seqs: tuple[int, ...]
    ladder_batch: int
    ladder_seq: int
    text_seq: int
    text_batch: int
    warmup_steps: int
    measured_steps: int
    text_steps: int
    device_bound: tuple[int, int]
    """(batch, seq) where the primary model's steps are device-bound: the factorial, speed and
    engine families run there."""
    engine_on_text: bool = False
    """The engine family trains the real model on text instead (the CPU: a real model's
    tokenizer and loss, where the tiny shape's would say little)."""
    weights_model: str = "llama-2-7b"
    """The model the `weights` family loads at each precision (the lesson's 7B table)."""


GPU_TIER = Tier(
    models=("llama-3.2-3b", "llama-2-7b", "llama-3.1-8b"),
    primary="llama-3.2-3b",
    ladder_model="llama-3.1-8b",
    ref_batch=1,
    ref_seq=512,
    sweep_batches=(1, 2, 4),
    sweep_seqs=(512, 1024, 2048),
    default_sweep_batches=(1, 4),
    default_sweep_seqs=(512, 2048),
    ladder_batch=4,
    ladder_seq=2048,
    text_seq=512,
    text_batch=4,
    warmup_steps=2,
    measured_steps=8,
    text_steps=30,
    device_bound=(4, 512),
)
CPU_TIER = Tier(
    models=("tiny", REAL_MODEL),
    primary="tiny",
    ladder_model="tiny",
    ref_batch=1,
    ref_seq=64,
    sweep_batches=(1, 2, 4),
    sweep_seqs=(32, 64, 128),
    default_sweep_batches=(1, 4),
    default_sweep_seqs=(32, 128),
    ladder_batch=4,
    ladder_seq=256,
    text_seq=64,
    text_batch=2,
    warmup_steps=1,
    measured_steps=4,
    text_steps=20,
    device_bound=(4, 128),
    engine_on_text=True,
    weights_model="tiny",
)
# Larger GPUs add the 13B shape to what runs (compat family).
_LARGE_GPU_EXTRA_MODELS: tuple[str, ...] = ("llama-2-13b",)
LARGE_GPU_MIN_GIB = 40.0
# ...and are device-bound at the lesson's T4 setting (b4 s2048), which fits them.
_LARGE_GPU_DEVICE_BOUND = (4, 2048)


def tier_for(profile: GpuProfile) -> Tier:
    if not profile.is_gpu:
        return CPU_TIER
    if profile.total_gib >= LARGE_GPU_MIN_GIB:
        return replace(
            GPU_TIER,
            models=GPU_TIER.models + _LARGE_GPU_EXTRA_MODELS,
            device_bound=_LARGE_GPU_DEVICE_BOUND,
        )
    return GPU_TIER


def lesson_dtype(profile: GpuProfile) -> ComputeDtype:
    """The lesson's advice: fp16 on pre-Ampere (T4), bf16 where the hardware has it."""
    if not profile.is_gpu:
        return "bf16"
    return "bf16" if profile.native_bf16 else "fp16"


def runs_at_speed(profile: GpuProfile, dtype: str, cpu_dtypes: Iterable[str] = ALL_CPU_DTYPES) -> bool:
    """Whether the real model trains at speed in `dtype` on `profile`: any dtype on a GPU, on a CPU
    the dtypes it multiplies natively (`cpu_dtypes`)."""
    return profile.is_gpu or dtype in cpu_dtypes


def text_dtype(profile: GpuProfile, cpu_dtypes: Iterable[str] = ALL_CPU_DTYPES) -> ComputeDtype:
    """The compute dtype of the real model's text cases: the lesson's, or fp32 where that one does
    not run at speed."""
    dtype = lesson_dtype(profile)
    return dtype if runs_at_speed(profile, dtype, cpu_dtypes) else "fp32"


def half_dtypes(profile: GpuProfile, cpu_dtypes: Iterable[str] = ALL_CPU_DTYPES) -> tuple[str, ...]:
    """The half-precision dtypes the stability and nan families compare on `profile`."""
    return tuple(d for d in HALF_DTYPES if runs_at_speed(profile, d, cpu_dtypes))


def cpu_text_note(profile: GpuProfile, cpu_dtypes: Iterable[str]) -> str:
    """One line for a run on a CPU that leaves half precision out of its text cases; "" otherwise."""
    slow = [d for d in HALF_DTYPES if d not in cpu_dtypes]
    if profile.is_gpu or not slow:
        return ""
    dtypes = frozenset(cpu_dtypes)
    left_out = f"its {'/'.join(slow)} stability and nan rows"
    if "bf16" in slow:
        left_out += " and the 16-bit LoRA reference of the quality family"
    return (
        f"this CPU has no {'/'.join(slow)} matmul instructions (torch's scalar fallback takes ~20x an fp32"
        f" step): the real model's text cases compute in {text_dtype(profile, dtypes)}, and {left_out}"
        " are not planned; a GPU, or a CPU with AVX-512 (bf16) or AVX512-FP16/AMX (fp16), runs them"
    )
