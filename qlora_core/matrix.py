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

from qlora_core.families import (
    Family,
    big_model_cases,
    ladder_cases,
    ladder_tag,
    multigpu_cases,
    nan_cases,
    weights_cases,
)
from qlora_core.gpus import ALL_CPU_DTYPES, GpuProfile
from qlora_core.models import REAL_MODEL
from qlora_core.spec import ENGINES, Case, reference_of
from qlora_core.tiers import (
    KERNEL_ENGINE,
    STABILITY_LRS,
    USERS_ENGINE,
    half_dtypes,
    lesson_dtype,
    runs_at_speed,
    text_dtype,
    tier_for,
)

MATRICES: tuple[str, ...] = ("smoke", "default", "full")
SMOKE_MAX = 6
DEFAULT_MAX = 49


class MatrixError(ValueError):
    pass


SHAREABLE_FAMILIES: frozenset[str] = frozenset(
    {
        Family.QUALITY,
        Family.STABILITY,
        Family.NAN,
        Family.SWEEP,
        Family.REFERENCE,
        Family.GC,
        Family.PREPARE,
        Family.COMPAT,
        Family.LADDER,
        Family.WEIGHTS,
    }
)
"""Families whose claims and tables never read speed, only numerics (losses, norms, perplexity)
or memory (the allocator's per-process peaks, NVML's per-process line): their cases may share the
device (`qlora_core.process.side_by_side`). A case that also serves a speed family (factorial, speed,
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
        (`SHAREABLE_FAMILIES`): it may run side by side (`qlora_core.process.side_by_side`)."""
        return bool(self.families) and all(family_name(f) in SHAREABLE_FAMILIES for f in self.families)


class _Plan:
    """Ordered, de-duplicated (by case hash) list of cases with their family tags."""

    def __init__(self) -> None:
        self._by_hash: dict[str, PlannedCase] = {}

    def add(self, case: Case, family: str) -> None:
        """Tag `case` with `family` (a `Family` or a ladder step's tag), stored as a plain str."""
        planned = self._by_hash.setdefault(case.hash, PlannedCase(case))
        if family not in planned.families:
            planned.families.append(str(family))

    def cases(self) -> list[PlannedCase]:
        return list(self._by_hash.values())


def build_matrix(
    profile: GpuProfile,
    matrix: str = "default",
    models: Iterable[str] | None = None,
    cpu_dtypes: frozenset[str] = ALL_CPU_DTYPES,
) -> list[PlannedCase]:
    """Every case `profile` runs at tier `matrix`; `models` replaces the profile's model set. On
    the CPU, `cpu_dtypes` are the compute dtypes the host multiplies at speed
    (`gpus.cpu_native_dtypes`; every dtype by default): see `tiers.text_dtype` and `half_dtypes`."""
    if matrix not in MATRICES:
        raise MatrixError(f"unknown matrix {matrix!r}; allowed: {', '.join(MATRICES)}")
    tier = tier_for(profile)
    if models:
        models = tuple(models)
        tier = replace(tier, models=models, primary=models[0], ladder_model=models[-1])
    if profile.count > 1:  # multi-GPU: a multi-card machine runs its own family only
        return [PlannedCase(case, [str(Family.MULTIGPU)]) for case in multigpu_cases(profile, tier)]
    dtype = lesson_dtype(profile)
    lesson = Case(
        tier.primary,
        quant_type="nf4",
        double_quant=True,
        compute_dtype=dtype,
        batch_size=tier.ref_batch,
        seq_len=tier.ref_seq,
        engine=USERS_ENGINE,
        warmup_steps=tier.warmup_steps,
        measured_steps=tier.measured_steps,
    )
    bound = lesson.replace(batch_size=tier.device_bound[0], seq_len=tier.device_bound[1])
    text_lesson = Case(
        REAL_MODEL,
        compute_dtype=text_dtype(profile, cpu_dtypes),
        batch_size=tier.text_batch,
        seq_len=tier.text_seq,
        engine=KERNEL_ENGINE,
        warmup_steps=0,
        measured_steps=tier.text_steps,
        data="text",
    )
    plan = _Plan()
    if matrix == "smoke":
        plan.add(bound, Family.FACTORIAL)
        plan.add(bound.replace(quant_type="fp4"), Family.FACTORIAL)
        plan.add(bound.replace(double_quant=False), Family.FACTORIAL)
        plan.add(reference_of(bound), Family.SPEED)
        plan.add(bound.replace(compute_dtype="fp32"), Family.FP32)
        plan.add(text_lesson, Family.QUALITY)
        planned = plan.cases()
        if len(planned) > SMOKE_MAX:
            raise MatrixError(f"smoke matrix for {profile.name} has {len(planned)} cases (> {SMOKE_MAX})")
        return planned

    full = matrix == "full"
    for quant in ("nf4", "fp4"):
        for dq in (True, False):
            for cdt in ("fp16", "bf16"):
                point = bound.replace(quant_type=quant, double_quant=dq, compute_dtype=cdt)
                plan.add(point, Family.FACTORIAL)
    plan.add(bound, Family.SPEED)
    plan.add(reference_of(bound), Family.SPEED)
    plan.add(bound.replace(compute_dtype="fp32"), Family.FP32)
    # sweep with the 16-bit reference at the same points
    batches = tier.sweep_batches if full else tier.default_sweep_batches
    seqs = tier.sweep_seqs if full else tier.default_sweep_seqs
    for b in batches:
        for s in seqs:
            point = lesson.replace(batch_size=b, seq_len=s)
            plan.add(point, Family.SWEEP)
            plan.add(reference_of(point), Family.REFERENCE)
    plan.add(lesson, Family.GC)
    plan.add(lesson.replace(gradient_checkpointing=False), Family.GC)
    plan.add(lesson, Family.PREPARE)
    plan.add(lesson.replace(prepare_kbit=False), Family.PREPARE)
    for step, case in enumerate(ladder_cases(profile, tier)):
        plan.add(case, ladder_tag(step))
    for model in tier.models:
        if model == REAL_MODEL:
            continue
        small = lesson.replace(model=model, batch_size=1, seq_len=tier.ref_seq)
        plan.add(small, Family.COMPAT)
        plan.add(reference_of(small), Family.COMPAT)
    if full and not models:  # minutes of GPU each (a 70B checkpoint, a 70B load): full tier only
        for case in big_model_cases(profile, tier, lesson):
            plan.add(case, Family.COMPAT)
    for case in weights_cases(profile, tier, full):
        plan.add(case, Family.WEIGHTS)
    for quant in ("nf4", "fp4"):
        for dq in (True, False):
            plan.add(text_lesson.replace(quant_type=quant, double_quant=dq), Family.QUALITY)
    if runs_at_speed(profile, reference_of(text_lesson).compute_dtype, cpu_dtypes):
        plan.add(reference_of(text_lesson), Family.QUALITY)
    for cdt in half_dtypes(profile, cpu_dtypes):
        for lr in STABILITY_LRS:
            plan.add(text_lesson.replace(compute_dtype=cdt, lr=lr), Family.STABILITY)
    for case in nan_cases(profile, text_lesson, full, half_dtypes(profile, cpu_dtypes)):
        plan.add(case, Family.NAN)
    device_bound = text_lesson if tier.engine_on_text else bound
    for point in (device_bound, lesson) if full else (device_bound,):
        for engine in ENGINES:
            plan.add(point.replace(engine=engine), Family.ENGINE)
    planned = plan.cases()
    if not full and len(planned) > DEFAULT_MAX:
        raise MatrixError(f"default matrix for {profile.name} has {len(planned)} cases (> {DEFAULT_MAX})")
    return planned
