"""The benchmark matrix: which Cases a profile runs at a tier (`build_matrix`), in one place.

The families, the device-bound point, the engines each family trains on and the tiers' sizes:
docs/matrix.md#families and docs/matrix.md#tiers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from qlora_core.cases.case import ENGINES, Case, reference_of
from qlora_core.cases.families import (
    Family,
    big_model_cases,
    ladder_cases,
    ladder_tag,
    multigpu_cases,
    nan_cases,
    weights_cases,
)
from qlora_core.cases.gpus import ALL_CPU_DTYPES, GpuProfile
from qlora_core.cases.tiers import (
    KERNEL_ENGINE,
    STABILITY_LRS,
    USERS_ENGINE,
    Tier,
    half_dtypes,
    lesson_dtype,
    runs_at_speed,
    text_dtype,
    tier_for,
)
from qlora_core.models import REAL_MODEL

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
    models = tuple(models) if models else ()
    tier = tier_for(profile)
    if models:
        tier = replace(tier, models=models, primary=models[0], ladder_model=models[-1])
    if profile.count > 1:  # multi-GPU: a multi-card machine runs its own family only
        return [PlannedCase(case, [str(Family.MULTIGPU)]) for case in multigpu_cases(profile, tier)]
    points = _points(profile, tier, cpu_dtypes)
    plan = _Plan()
    if matrix == "smoke":
        _add_smoke(plan, points)
        return _at_most(plan.cases(), SMOKE_MAX, f"smoke matrix for {profile.name}")
    full = matrix == "full"
    _add_device_bound(plan, points.bound)
    _add_sweep(plan, points.lesson, tier, full)
    _add_switches(plan, points.lesson)
    # The 70B shape costs minutes of GPU each (a 70B checkpoint, a 70B load): full tier only.
    _add_fit(plan, profile, tier, points.lesson, full, big_models=full and not models)
    _add_text(plan, profile, points.text, full, cpu_dtypes)
    _add_engines(plan, points.text if tier.engine_on_text else points.bound, points.lesson, full)
    return plan.cases() if full else _at_most(plan.cases(), DEFAULT_MAX, f"default matrix for {profile.name}")


@dataclass(frozen=True)
class _Points:
    """The three cases every family varies."""

    lesson: Case
    """The lesson's recommended config (nf4 + double quant + its compute dtype for the profile) at
    the tier's reference point, on the Trainer."""
    bound: Case
    """`lesson` at the device-bound point (`Tier.device_bound`)."""
    text: Case
    """The real model on text, on the core loop, for exactly its measured steps."""


def _points(profile: GpuProfile, tier: Tier, cpu_dtypes: frozenset[str]) -> _Points:
    lesson = Case(
        tier.primary,
        quant_type="nf4",
        double_quant=True,
        compute_dtype=lesson_dtype(profile),
        batch_size=tier.ref_batch,
        seq_len=tier.ref_seq,
        engine=USERS_ENGINE,
        warmup_steps=tier.warmup_steps,
        measured_steps=tier.measured_steps,
    )
    text = Case(
        REAL_MODEL,
        compute_dtype=text_dtype(profile, cpu_dtypes),
        batch_size=tier.text_batch,
        seq_len=tier.text_seq,
        engine=KERNEL_ENGINE,
        warmup_steps=0,
        measured_steps=tier.text_steps,
        data="text",
    )
    bound = lesson.replace(batch_size=tier.device_bound[0], seq_len=tier.device_bound[1])
    return _Points(lesson=lesson, bound=bound, text=text)


def _at_most(planned: list[PlannedCase], limit: int, what: str) -> list[PlannedCase]:
    """`planned`, or a MatrixError when a tier outgrew its documented size."""
    if len(planned) > limit:
        raise MatrixError(f"{what} has {len(planned)} cases (> {limit})")
    return planned


def _add_smoke(plan: _Plan, points: _Points) -> None:
    """The smoke tier: the device-bound point's nf4+dq, fp4 and no-double-quant rows, its 16-bit
    reference and fp32-compute rows, and one quality case."""
    bound = points.bound
    plan.add(bound, Family.FACTORIAL)
    plan.add(bound.replace(quant_type="fp4"), Family.FACTORIAL)
    plan.add(bound.replace(double_quant=False), Family.FACTORIAL)
    plan.add(reference_of(bound), Family.SPEED)
    plan.add(bound.replace(compute_dtype="fp32"), Family.FP32)
    plan.add(points.text, Family.QUALITY)


def _add_device_bound(plan: _Plan, bound: Case) -> None:
    """``factorial`` (the four axes), ``speed`` (beside the 16-bit reference), ``fp32``."""
    for quant in ("nf4", "fp4"):
        for dq in (True, False):
            for cdt in ("fp16", "bf16"):
                point = bound.replace(quant_type=quant, double_quant=dq, compute_dtype=cdt)
                plan.add(point, Family.FACTORIAL)
    plan.add(bound, Family.SPEED)
    plan.add(reference_of(bound), Family.SPEED)
    plan.add(bound.replace(compute_dtype="fp32"), Family.FP32)


def _add_sweep(plan: _Plan, lesson: Case, tier: Tier, full: bool) -> None:
    """``sweep``: batch x sequence length, with the 16-bit reference at the same points."""
    batches = tier.sweep_batches if full else tier.default_sweep_batches
    seqs = tier.sweep_seqs if full else tier.default_sweep_seqs
    for b in batches:
        for s in seqs:
            point = lesson.replace(batch_size=b, seq_len=s)
            plan.add(point, Family.SWEEP)
            plan.add(reference_of(point), Family.REFERENCE)


def _add_switches(plan: _Plan, lesson: Case) -> None:
    """``gc`` / ``prepare``: gradient checkpointing off, prepare_model_for_kbit_training off."""
    plan.add(lesson, Family.GC)
    plan.add(lesson.replace(gradient_checkpointing=False), Family.GC)
    plan.add(lesson, Family.PREPARE)
    plan.add(lesson.replace(prepare_kbit=False), Family.PREPARE)


def _add_fit(
    plan: _Plan, profile: GpuProfile, tier: Tier, lesson: Case, full: bool, big_models: bool
) -> None:
    """What fits in memory: ``ladder:N``, ``compat`` (each model, and the 70B shape when
    `big_models`), ``weights``."""
    for step, case in enumerate(ladder_cases(profile, tier)):
        plan.add(case, ladder_tag(step))
    for model in tier.models:
        if model == REAL_MODEL:
            continue
        small = lesson.replace(model=model, batch_size=1, seq_len=tier.ref_seq)
        plan.add(small, Family.COMPAT)
        plan.add(reference_of(small), Family.COMPAT)
    if big_models:
        for case in big_model_cases(profile, tier, lesson):
            plan.add(case, Family.COMPAT)
    for case in weights_cases(profile, tier, full):
        plan.add(case, Family.WEIGHTS)


def _add_text(plan: _Plan, profile: GpuProfile, text: Case, full: bool, cpu_dtypes: frozenset[str]) -> None:
    """The real model on text: ``quality``, ``stability``, ``nan``."""
    for quant in ("nf4", "fp4"):
        for dq in (True, False):
            plan.add(text.replace(quant_type=quant, double_quant=dq), Family.QUALITY)
    if runs_at_speed(profile, reference_of(text).compute_dtype, cpu_dtypes):
        plan.add(reference_of(text), Family.QUALITY)
    for cdt in half_dtypes(profile, cpu_dtypes):
        for lr in STABILITY_LRS:
            plan.add(text.replace(compute_dtype=cdt, lr=lr), Family.STABILITY)
    for case in nan_cases(profile, text, full, half_dtypes(profile, cpu_dtypes)):
        plan.add(case, Family.NAN)


def _add_engines(plan: _Plan, device_bound: Case, lesson: Case, full: bool) -> None:
    """``engine``: every engine at the device-bound point and, in the full tier, the lesson's."""
    for point in (device_bound, lesson) if full else (device_bound,):
        for engine in ENGINES:
            plan.add(point.replace(engine=engine), Family.ENGINE)
