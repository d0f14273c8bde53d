"""The matrix's families: their names (`Family`, the one source of the strings a row's `families`
column holds), and the builders of the larger ones, each from a `Tier`: the lesson's OOM ladder,
the 70B shape on one card and on several, the nan grid, the weights family and the multi-GPU
family. `qlora_core.cases.matrix` decides which of them a tier runs; docs/matrix.md#families says what
each one measures."""

from __future__ import annotations

from enum import Enum

from qlora_core.cases.case import Case, reference_of
from qlora_core.cases.gpus import GpuProfile
from qlora_core.cases.tiers import (
    KERNEL_ENGINE,
    LADDER_START_LR,
    LARGE_GPU_MIN_GIB,
    NAN_FAILURE_LR,
    NAN_LRS,
    NAN_REMEDY_LR,
    USERS_ENGINE,
    Tier,
    lesson_dtype,
)
from qlora_core.models import SHAPES


class Family(str, Enum):
    """A family a case serves: its value is what rows store (`Result.families`, comma-separated
    tags), so a value never changes. A str: compares, hashes and joins as its value."""

    FACTORIAL = "factorial"
    SPEED = "speed"
    FP32 = "fp32"
    SWEEP = "sweep"
    REFERENCE = "reference"
    GC = "gc"
    PREPARE = "prepare"
    LADDER = "ladder"
    """Tagged by step: `ladder_tag(k)`, `ladder:0` .. `ladder:4`."""
    COMPAT = "compat"
    WEIGHTS = "weights"
    QUALITY = "quality"
    STABILITY = "stability"
    NAN = "nan"
    ENGINE = "engine"
    MULTIGPU = "multigpu"
    # Outside the matrix: the rows of the tools that run cases it does not plan.
    HAND_PICKED = "hand-picked"
    """`tools/run_cases.py`'s cases."""
    FIT_ADVISOR = "fit-advisor"
    """`tools/measure_fit.py`'s cases: the fit advisor's answer, measured."""

    def __str__(self) -> str:
        # The value, as str() and f-strings give a plain str (Python 3.12 changed an Enum's format).
        return self.value


def ladder_tag(step: int) -> str:
    """The tag of the OOM ladder's step `step` (0-based): ``ladder:2``."""
    return f"{Family.LADDER}:{step}"


def ladder_cases(profile: GpuProfile, tier: Tier) -> list[Case]:
    """The lesson's OOM resolution order, from its T4 budget setting, one step at a time.

    0: batch 4, seq 2048, 8-bit Adam, no checkpointing (the T4 budget table's setting)
    1: batch 2, grad accumulation 2      (step 1: reduce batch size)
    2: batch 1, grad accumulation 4      (step 2: accumulation keeps the effective batch)
    3: seq 1024                          (step 3: reduce sequence length)
    4: gradient checkpointing on         (step 4)
    """
    start = Case(
        tier.ladder_model,
        quant_type="nf4",
        double_quant=True,
        compute_dtype=lesson_dtype(profile),
        batch_size=tier.ladder_batch,
        seq_len=tier.ladder_seq,
        gradient_checkpointing=False,
        optimizer="adamw_8bit",
        lr=LADDER_START_LR,
        engine=USERS_ENGINE,
        warmup_steps=tier.warmup_steps,
        measured_steps=max(2, tier.measured_steps // 2),
    )
    half = max(1, tier.ladder_batch // 2)
    steps = [
        start,
        start.replace(batch_size=half, grad_accum=tier.ladder_batch // half),
        start.replace(batch_size=1, grad_accum=tier.ladder_batch),
        start.replace(batch_size=1, grad_accum=tier.ladder_batch, seq_len=tier.ladder_seq // 2),
    ]
    steps.append(steps[-1].replace(gradient_checkpointing=True))
    return steps


# 70B on one card ------------------------------------------------------------------
BIG_MODEL = "llama-2-70b"
BIG_MODEL_STEPS = {"warmup_steps": 1, "measured_steps": 3}
"""A 70B step takes seconds: memory is what these cases are for, a few steps measure it."""


def big_model_cases(profile: GpuProfile, tier: Tier, lesson: Case) -> list[Case]:
    """The 70B shape in the compat family of a single card of 40 GB or more (A100 40/80 GB, the
    48 GB A6000, H100, H200): QLoRA at the smallest point (b1, the tier's shortest sequence,
    checkpointing, the Trainer) from its pre-quantized checkpoint (no 16-bit checkpoint exists),
    and its 16-bit LoRA reference where the 16-bit weights exceed the card: that row is judged at
    load from the weights' exact bytes on the meta device (computed, not measured; `child`). On a
    card that could hold them (the H200) no 16-bit row is planned: it could not be measured.
    """
    if not profile.is_gpu or profile.count > 1 or profile.total_gib < LARGE_GPU_MIN_GIB:
        return []
    qlora = lesson.replace(
        model=BIG_MODEL, batch_size=1, seq_len=tier.ref_seq, prequantized=True, **BIG_MODEL_STEPS
    )
    cases = [qlora]
    # bf16 parameters and no persistent buffers: 2 bytes per parameter is the checkpoint's size.
    if 2 * SHAPES[BIG_MODEL].total_params / 2**30 > profile.total_gib:
        cases.append(reference_of(qlora))
    return cases


def nan_cases(
    profile: GpuProfile, text_lesson: Case, full: bool, dtypes: tuple[str, ...] = ("fp16", "bf16")
) -> list[Case]:
    """The ``nan`` family: fp16 and bf16 over a learning-rate grid on the real model on text.

    full: every rate of `NAN_LRS`, both dtypes, through the core loop and the users' engine (the
    Trainer, whose fp16 gradient scaler is what a user sees). default: the failure point
    (`NAN_FAILURE_LR`) in both dtypes and the lesson's rate in fp16, per engine; the core loop's
    rows at 1e-4 are the stability family's own (shared by hash). On the CPU the default leaves the
    Trainer out: accelerate gives fp16 no autocast and no scaler there (see `engines.hf`), so its
    fp16 rows say nothing about fp16. Only the points of `dtypes` (`tiers.half_dtypes`).
    """
    engines = (KERNEL_ENGINE, USERS_ENGINE) if profile.is_gpu or full else (KERNEL_ENGINE,)
    if full:
        points = [(lr, dtype) for lr in NAN_LRS for dtype in ("fp16", "bf16")]
    else:
        points = [(NAN_REMEDY_LR, "fp16"), (NAN_FAILURE_LR, "fp16"), (NAN_FAILURE_LR, "bf16")]
    return [
        text_lesson.replace(engine=engine, compute_dtype=dtype, lr=lr)
        for engine in engines
        for lr, dtype in points
        if dtype in dtypes
    ]


def weights_cases(profile: GpuProfile, tier: Tier, full: bool) -> list[Case]:
    """The `weights` family: `tier.weights_model` loaded only, at each precision of the lesson's
    7B table. Unquantized weights load in their own dtype (FP32, FP16, BF16); quantized ones
    keep their unquantized parameters (embeddings, norms, lm_head) in the profile's dtype.

    default: FP32 and INT8 (what no training family loads), and LoRA over the INT8 weights at the
    compat point, the users' way: the INT8 row's "Total with Training" (compat's 16-bit LoRA and
    QLoRA give FP16's and INT4's). full: FP16, BF16, NF4/FP4 with and without double quant too.
    """
    dtype = lesson_dtype(profile)
    load = Case(tier.weights_model, quant_type="none", compute_dtype="fp32", load_only=True)
    int8 = load.replace(quant_type="int8", compute_dtype=dtype)
    at = {"batch_size": tier.ref_batch, "seq_len": tier.ref_seq, "engine": USERS_ENGINE, "prepare_kbit": True}
    steps = {"warmup_steps": tier.warmup_steps, "measured_steps": tier.measured_steps}
    cases = [load, int8, int8.replace(load_only=False, **at, **steps)]
    if full:
        cases += [load.replace(compute_dtype="fp16"), load.replace(compute_dtype="bf16")]
        for quant in ("nf4", "fp4"):
            for dq in (True, False):
                cases.append(load.replace(quant_type=quant, double_quant=dq, compute_dtype=dtype))
    return cases


# multi-GPU -------------------------------------------------------------------------
MULTIGPU_MODEL = "llama-3.1-8b"


def multigpu_cases(profile: GpuProfile, tier: Tier) -> list[Case]:
    """The `multigpu` family on a machine of `profile.count` cards: the 8B shape through the
    Trainer at the device-bound point (checkpointing on), on one card and on all of them.

    - one card, 4-bit storage uint8: what a single-card user runs (the single-T4 result);
    - one card, storage in the compute dtype and no prepare, as FSDP needs them (see `spec`);
    - every card, FSDP, and every card, DDP (every rank holds the whole 4-bit model), both
      otherwise equal to the case above: per-GPU memory and, against it, the scaling efficiency.
    Each rank trains `batch_size` rows: the ranks train `count` times the one-card case's tokens.

    On cards of 20 GiB or more (`l4x2`), the 70B shape on every card too
    (`big_model_multigpu_cases`): the FSDP-QLoRA recipe with CPU offload, and the same case without
    it. No one-card 70B case beside them: its 4-bit weights alone (~34 GiB, measured loading on
    the H200) exceed one such card, and the single-card 70B row of the 40 GB+ profiles already
    measures what one card needs.
    """
    batch, seq = tier.device_bound
    dtype = lesson_dtype(profile)
    single = Case(
        MULTIGPU_MODEL,
        compute_dtype=dtype,
        batch_size=batch,
        seq_len=seq,
        engine=USERS_ENGINE,
        warmup_steps=tier.warmup_steps,
        measured_steps=tier.measured_steps,
    )
    floating = single.replace(quant_storage=dtype, prepare_kbit=False)
    ranks = {"num_gpus": profile.count}
    cases = [
        single,
        floating,
        floating.replace(strategy="fsdp", **ranks),
        floating.replace(strategy="ddp", **ranks),
    ]
    if profile.total_gib >= _BIG_MODEL_MULTIGPU_MIN_GIB:
        cases += big_model_multigpu_cases(profile, tier, floating)
    return cases


_BIG_MODEL_MULTIGPU_MIN_GIB = 20.0
"""Cards from which the 70B shape's two-card case is planned: a 24 GB card holds half its 4-bit
weights (~17 GiB) with room to train; a 16 GB T4 would not."""


def big_model_multigpu_cases(profile: GpuProfile, tier: Tier, floating: Case) -> list[Case]:
    """The 70B shape on every card of `profile` at the smallest point (b1, the tier's shortest
    sequence, checkpointing, the Trainer), FSDP, from its pre-quantized checkpoint stored in the
    compute dtype, so that FSDP can shard the packed weights and rank 0 alone loads them, into CPU
    RAM (`distributed.loads_on_rank0_only`); twice:

    - with FSDP's CPU offload of the parameters (`Case.cpu_offload`): the published recipe for
      70B on two 24 GB GPUs (Answer.AI's fsdp_qlora `--use_cpu_offload`, the alignment-handbook's
      `fsdp_qlora.yaml`), the case the "70B on two 24 GB GPUs" verdict reads (`reports.tables.two_card_70b`);
    - without it, equal otherwise: what each card must hold when it keeps its whole shard.
    """
    sharded = floating.replace(
        model=BIG_MODEL,
        batch_size=1,
        seq_len=tier.ref_seq,
        gradient_checkpointing=True,
        prequantized=True,
        strategy="fsdp",
        num_gpus=profile.count,
        **BIG_MODEL_STEPS,
    )
    return [sharded.replace(cpu_offload=True), sharded]
