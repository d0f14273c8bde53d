"""The benchmark matrix: which Cases a profile runs, in one place.

Engines. The families the claims and tables read for memory and speed run on `USERS_ENGINE`,
transformers' `Trainer` as the lesson's readers configure it: what a Trainer user gets, not a
hand-written loop (at 3B b2 s1024 the two differ by gigabytes). Families that compare the data
types' numerics on text (``quality``, ``stability``) keep the core loop, same numerics, cheaper.

Families (each case carries the tags of every family it serves, so a case shared by two
families runs once):
- ``factorial``: the lesson's four axes, nf4/fp4 x double quant on/off x fp16/bf16, at the
  profile's device-bound point (`Tier.device_bound`): every speed comparison between those axes
  (double quant's overhead, fp16 vs bf16, nf4 vs fp4) is made where the GPU, not the host,
  sets the pace. Memory comparisons hold at any point.
- ``speed``: the device-bound point's nf4 + double quant row beside its 16-bit LoRA reference
  and its fp32-compute row: the QLoRA-vs-LoRA slowdown and the compute-dtype table.
- ``sweep``: batch x sequence length at the lesson's recommended config (nf4 + double quant +
  the lesson's compute dtype for the profile), beside the 16-bit LoRA reference (tag ``reference``).
- ``fp32``: bitsandbytes' default compute dtype (fp32), at the device-bound point.
- ``gc`` / ``prepare``: gradient checkpointing off, prepare_model_for_kbit_training off, each beside
  the lesson's point (which carries the tag too).
- ``ladder:N``: the lesson's OOM resolution order from its T4 setting (8B, batch 4, seq 2048,
  8-bit Adam, no checkpointing): batch 2 -> batch 1 with gradient accumulation keeping the
  effective batch -> seq 1024 -> gradient checkpointing.
- ``compat``: each model of the profile loaded and trained as QLoRA and as 16-bit LoRA at the
  smallest point: which sizes fit on this GPU at all. GPUs run the 7B shape (Llama-2-7B) here
  too, so the lesson's 7B claims are judged on a 7B model. In the full tier, cards of 40 GB or
  more add the 70B shape (`big_model_cases`): QLoRA from a pre-quantized checkpoint, 16-bit
  judged from its exact weight bytes where they exceed the card (computed, not measured).
- ``weights``: the weights model (7B on GPUs, tiny on the CPU) loaded only (`Case.load_only`) at
  each precision of the lesson's 7B table, and trained with LoRA over its INT8 weights (that
  row's training total); see `weights_cases`.
- ``quality``: the real model on held-out text: nf4/fp4 x double quant and the 16-bit reference.
- ``stability``: the real model on text, fp16 vs bf16 compute at learning rates 1e-4, 2e-4, 1e-3.
  Like ``quality`` and ``nan``, its cases train on text, so each trains exactly its warm-up and
  measured steps on every device (`Case.fixed_steps`): the claims compare their losses step for step.
- ``nan``: the lesson's NaN advice exercised where fp16 goes non-finite, with its two remedies
  there (lr 1e-4; bf16 at the same rate); see `nan_cases`.
- ``engine``: the same case trained by the core loop, transformers' Trainer and TRL's SFTTrainer,
  at the device-bound point (the CPU: the real model on text) and, in the full tier, at the
  lesson's point too. The default tier leaves the lesson's point out: its batch-1 steps are
  host-bound (their times jitter 10-40% between processes).
- ``multigpu``: what a multi-card profile (``t4x2``, ``l4x2``, ``h200x2``) runs instead of the
  families above (its card's: ``--gpu t4``); see `multigpu_cases`.

The device-bound point: large GPUs b4 s2048 (the lesson's T4 setting); smaller GPUs b4 s512, the
largest default sweep point that fits an emulated T4; the CPU the largest default sweep point.

Tiers: ``smoke`` (at most 6 cases: the device-bound point's nf4+dq, fp4 and no-double-quant
rows, its 16-bit reference and fp32-compute rows, and one quality case), ``default`` (at most
49: the t4 profile 47, h200 49, cpu 42), ``full`` (everything).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from qlora_core.gpus import GpuProfile
from qlora_core.models import REAL_MODEL, SHAPES
from qlora_core.spec import ENGINES, Case, reference_of

MATRICES: tuple[str, ...] = ("smoke", "default", "full")
USERS_ENGINE = "trainer"
"""The engine of the families the memory and speed claims read (see the module docstring)."""
KERNEL_ENGINE = "loop"
"""The engine of the families that compare numerics on text (quality, stability)."""
SMOKE_MAX = 6
DEFAULT_MAX = 49
LADDER_START_LR = 2e-4
STABILITY_LRS: tuple[float, ...] = (1e-4, 2e-4, 1e-3)
NAN_REMEDY_LR = 1e-4
"""The lesson's "Reduce to 1e-4"."""
NAN_FAILURE_LR = 1e-1
"""The default tier's high rate: fp16 went non-finite there on the real model on the CPU (loop,
step 9 of 20) while bf16 stayed finite; the full grid brackets it on either side."""
NAN_LRS: tuple[float, ...] = (NAN_REMEDY_LR, 1e-3, 1e-2, NAN_FAILURE_LR, 1.0)
"""The full tier's grid: four decades from the lesson's rate to 1.0."""


class MatrixError(ValueError):
    pass


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
_LARGE_GPU_MIN_GIB = 40.0
# ...and are device-bound at the lesson's T4 setting (b4 s2048), which fits them.
_LARGE_GPU_DEVICE_BOUND = (4, 2048)


def tier_for(profile: GpuProfile) -> Tier:
    if not profile.is_gpu:
        return CPU_TIER
    if profile.total_gib >= _LARGE_GPU_MIN_GIB:
        return replace(
            GPU_TIER,
            models=GPU_TIER.models + _LARGE_GPU_EXTRA_MODELS,
            device_bound=_LARGE_GPU_DEVICE_BOUND,
        )
    return GPU_TIER


def lesson_dtype(profile: GpuProfile) -> str:
    """The lesson's advice: fp16 on pre-Ampere (T4), bf16 where the hardware has it."""
    if not profile.is_gpu:
        return "bf16"
    return "bf16" if profile.native_bf16 else "fp16"


SHAREABLE_FAMILIES: frozenset[str] = frozenset(
    {"quality", "stability", "nan", "sweep", "reference", "gc", "prepare", "compat", "ladder", "weights"}
)
"""Families whose claims and tables never read speed, only numerics (losses, norms, perplexity)
or memory (the allocator's per-process peaks, NVML's per-process line): their cases may share the
device (`qlora_core.side_by_side`). A case that also serves a speed family (factorial, speed,
fp32, engine) runs alone."""


def family_name(tag: str) -> str:
    """The family of a case's tag: ``ladder:2`` -> ``ladder``."""
    return tag.split(":", 1)[0]


@dataclass
class PlannedCase:
    case: Case
    families: list[str] = field(default_factory=list)
    repeats: int = 1
    """Fresh-process runs of this case (a tier may give its speed families more); `--repeat N`
    overrides it for every case."""

    @property
    def tags(self) -> str:
        return ",".join(self.families)

    @property
    def shareable(self) -> bool:
        """Every family of the case reads what does not depend on other processes on the device
        (`SHAREABLE_FAMILIES`): it may run side by side (`qlora_core.side_by_side`)."""
        return bool(self.families) and all(family_name(f) in SHAREABLE_FAMILIES for f in self.families)


class _Plan:
    """Ordered, de-duplicated (by case hash) list of cases with their family tags."""

    def __init__(self) -> None:
        self._by_hash: dict[str, PlannedCase] = {}

    def add(self, case: Case, family: str) -> None:
        planned = self._by_hash.setdefault(case.hash, PlannedCase(case))
        if family not in planned.families:
            planned.families.append(family)

    def cases(self) -> list[PlannedCase]:
        return list(self._by_hash.values())


def build_matrix(
    profile: GpuProfile, matrix: str = "default", models: Iterable[str] | None = None
) -> list[PlannedCase]:
    """Every case `profile` runs at tier `matrix`; `models` replaces the profile's model set."""
    if matrix not in MATRICES:
        raise MatrixError(f"unknown matrix {matrix!r}; allowed: {', '.join(MATRICES)}")
    tier = tier_for(profile)
    if models:
        models = tuple(models)
        tier = replace(tier, models=models, primary=models[0], ladder_model=models[-1])
    if profile.count > 1:  # multi-GPU: a multi-card machine runs its own family only
        return [PlannedCase(case, ["multigpu"]) for case in multigpu_cases(profile, tier)]
    dtype = lesson_dtype(profile)
    steps = {"warmup_steps": tier.warmup_steps, "measured_steps": tier.measured_steps}
    lesson = Case(
        tier.primary,
        quant_type="nf4",
        double_quant=True,
        compute_dtype=dtype,
        batch_size=tier.ref_batch,
        seq_len=tier.ref_seq,
        engine=USERS_ENGINE,
        **steps,
    )
    bound = lesson.replace(batch_size=tier.device_bound[0], seq_len=tier.device_bound[1])
    text_steps = {"warmup_steps": 0, "measured_steps": tier.text_steps, "data": "text"}
    text_lesson = Case(
        REAL_MODEL,
        compute_dtype=dtype,
        batch_size=tier.text_batch,
        seq_len=tier.text_seq,
        engine=KERNEL_ENGINE,
        **text_steps,
    )
    plan = _Plan()
    if matrix == "smoke":
        plan.add(bound, "factorial")
        plan.add(bound.replace(quant_type="fp4"), "factorial")
        plan.add(bound.replace(double_quant=False), "factorial")
        plan.add(reference_of(bound), "speed")
        plan.add(bound.replace(compute_dtype="fp32"), "fp32")
        plan.add(text_lesson, "quality")
        planned = plan.cases()
        if len(planned) > SMOKE_MAX:
            raise MatrixError(f"smoke matrix for {profile.name} has {len(planned)} cases (> {SMOKE_MAX})")
        return planned

    full = matrix == "full"
    for quant in ("nf4", "fp4"):
        for dq in (True, False):
            for cdt in ("fp16", "bf16"):
                plan.add(bound.replace(quant_type=quant, double_quant=dq, compute_dtype=cdt), "factorial")
    plan.add(bound, "speed")
    plan.add(reference_of(bound), "speed")
    plan.add(bound.replace(compute_dtype="fp32"), "fp32")
    # sweep with the 16-bit reference at the same points
    batches = tier.sweep_batches if full else tier.default_sweep_batches
    seqs = tier.sweep_seqs if full else tier.default_sweep_seqs
    for b in batches:
        for s in seqs:
            point = lesson.replace(batch_size=b, seq_len=s)
            plan.add(point, "sweep")
            plan.add(reference_of(point), "reference")
    plan.add(lesson, "gc")
    plan.add(lesson.replace(gradient_checkpointing=False), "gc")
    plan.add(lesson, "prepare")
    plan.add(lesson.replace(prepare_kbit=False), "prepare")
    for step, case in enumerate(ladder_cases(profile, tier)):
        plan.add(case, f"ladder:{step}")
    for model in tier.models:
        if model == REAL_MODEL:
            continue
        small = lesson.replace(model=model, batch_size=1, seq_len=tier.ref_seq)
        plan.add(small, "compat")
        plan.add(reference_of(small), "compat")
    if full and not models:  # minutes of GPU each (a 70B checkpoint, a 70B load): full tier only
        for case in big_model_cases(profile, tier, lesson):
            plan.add(case, "compat")
    for case in weights_cases(profile, tier, full):
        plan.add(case, "weights")
    for quant in ("nf4", "fp4"):
        for dq in (True, False):
            plan.add(text_lesson.replace(quant_type=quant, double_quant=dq), "quality")
    plan.add(reference_of(text_lesson), "quality")
    for cdt in ("fp16", "bf16"):
        for lr in STABILITY_LRS:
            plan.add(text_lesson.replace(compute_dtype=cdt, lr=lr), "stability")
    for case in nan_cases(profile, text_lesson, full):
        plan.add(case, "nan")
    device_bound = text_lesson if tier.engine_on_text else bound
    for point in (device_bound, lesson) if full else (device_bound,):
        for engine in ENGINES:
            plan.add(point.replace(engine=engine), "engine")
    planned = plan.cases()
    if not full and len(planned) > DEFAULT_MAX:
        raise MatrixError(f"default matrix for {profile.name} has {len(planned)} cases (> {DEFAULT_MAX})")
    return planned


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
    if not profile.is_gpu or profile.count > 1 or profile.total_gib < _LARGE_GPU_MIN_GIB:
        return []
    qlora = lesson.replace(
        model=BIG_MODEL, batch_size=1, seq_len=tier.ref_seq, prequantized=True, **BIG_MODEL_STEPS
    )
    cases = [qlora]
    # bf16 parameters and no persistent buffers: 2 bytes per parameter is the checkpoint's size.
    if 2 * SHAPES[BIG_MODEL].total_params / 2**30 > profile.total_gib:
        cases.append(reference_of(qlora))
    return cases


def nan_cases(profile: GpuProfile, text_lesson: Case, full: bool) -> list[Case]:
    """The ``nan`` family: fp16 and bf16 over a learning-rate grid on the real model on text.

    full: every rate of `NAN_LRS`, both dtypes, through the core loop and the users' engine (the
    Trainer, whose fp16 gradient scaler is what a user sees). default: the failure point
    (`NAN_FAILURE_LR`) in both dtypes and the lesson's rate in fp16, per engine; the core loop's
    rows at 1e-4 are the stability family's own (shared by hash). On the CPU the default leaves the
    Trainer out: accelerate gives fp16 no autocast and no scaler there (see `engines.hf`), so its
    fp16 rows say nothing about fp16.
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
      `fsdp_qlora.yaml`), the case the "70B on two 24 GB GPUs" verdict reads (`reports.two_card_70b`);
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
