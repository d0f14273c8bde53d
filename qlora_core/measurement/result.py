"""`Result`: one case's outcome and measurements, as the child measured it.

Its measurements sit in groups (`.timing`, `.hardware`, `.environment`, `.weights`, `.memory`,
`.training`, `.quality`, `.precision`, `.ranks`, `.needed`) whose fields keep their column names:
stored and in a frame they are one flat record in `RESULT_FIELDS` order (`Result.flat`,
`from_dict`); code that goes by column name uses `get_field` / `set_fields`. Slots make a column
written at the wrong level (`r.peak_alloc_gib = ...`) raise. Units live in the field names
(`_gib` = 2**30 bytes, `_bytes`, `_ms`, `_s`, `_per_s`); per-step series are lists, the rest
scalars; a metric not measured is None (NaN in the frame), never 0. See docs/design.md.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import tempfile
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from qlora_core.cases.case import Case

RESULT_SCHEMA_VERSION = 2
"""The version of a stored Result row. 2: its `case` holds every Case field (a row of version 1
may lack those added after the first release). Readers migrate older rows and refuse newer ones:
`reports.run.folder`."""


class Status(str, Enum):
    """How a case ended. Every outcome is a recorded row; none is an exception in the parent.

    Which exception gives which status: `qlora_core.process.outcomes`; how the child died (timeout,
    signal, exit code): `qlora_core.process.runner`.
    """

    OK = "ok"
    OOM = "oom"
    NAN = "nan"
    TIMEOUT = "timeout"
    CRASHED = "crashed"  # a death, or an exception we do not recognise (a bug): rerun
    CUDA_ERROR = "cuda_error"
    UNSUPPORTED = "unsupported"  # a recognised library refusal (outcomes.RECOGNISED_REFUSALS)
    CONFIG_ERROR = "config_error"  # the Case or its arguments failed validation (CaseError)
    MISSING_MODEL = "missing_model"


STATUSES: tuple[str, ...] = tuple(s.value for s in Status)
# Outcomes that say something about the case itself (kept on --resume): rerunning the same case
# on the same stack gives the same outcome. The others (crashed, timeout, cuda_error,
# missing_model) are failures of the run, or of our code, that a resume retries.
FINAL_STATUSES: frozenset[str] = frozenset(
    s.value for s in (Status.OK, Status.OOM, Status.NAN, Status.UNSUPPORTED, Status.CONFIG_ERROR)
)


@dataclass(slots=True)
class Timing:
    """The wall time and where it goes, phase by phase (seconds; see `qlora_core.process.child`)."""

    wall_s: float | None = None  # the parent's: spawning the child to its exit
    start_s: float | None = None  # parent's spawn (or hand-over to a warm spare) to the child's main
    warm_spare: bool | None = None  # the case ran in a warm spare (process/spare.py); False: cold
    spare_import_s: float | None = None  # the spare's imports before the hand-over (not in wall_s)
    import_s: float | None = None  # importing torch, transformers, peft, bitsandbytes
    create_s: float | None = None  # creating the model's checkpoint in the cache (None: it was there)
    load_s: float | None = None  # from_pretrained in 4 bits (or 16)
    prepare_s: float | None = None  # prepare_model_for_kbit_training + LoRA
    warmup_s: float | None = None  # warm-up steps (+ the slowdown knob's calibration)
    train_s: float | None = None  # measured steps
    profile_s: float | None = None  # profiled steps, the profiler's start, stop and parse
    eval_s: float | None = None  # held-out perplexity, before and after training (data == "text")


@dataclass(slots=True)
class Hardware:
    """The device the case ran on, its emulation of a profile, and its share of a shared card."""

    device: str = ""  # "cuda" or "cpu"
    gpu_name: str = ""
    gpu_capability: str = ""
    gpu_total_gib: float | None = None
    gpus_visible: int | None = None  # GPUs the child's CUDA saw (a one-GPU case: 1, runner.child_env)
    context_gib: float | None = (
        None  # this process's device memory after its CUDA context (NVML, per process)
    )
    side_by_side: int | None = None  # cases that shared the device with it at most (None: it ran alone)
    # Side by side on a real card (qlora_core.process.lanes): the run's share of the device (GiB, context
    # included) and the allocator cap it gave (share less context); not the profile's cap, which
    # memory_cap_gib is. None: alone, or an emulated profile (each lane capped like its card).
    lane_share_gib: float | None = None
    lane_cap_gib: float | None = None
    # This row is the rerun alone of a run that shared a real card and ran out of memory under its
    # lane cap (or came near it): why, and that run's share (its Result: cases/<hash>-lane.json).
    lane_rerun_reason: str = ""
    lane_rerun_share_gib: float | None = None
    torch_threads: int | None = None  # torch's CPU threads in the child (side by side: its share)
    emulated: bool = False
    emulated_on: str = ""
    memory_cap_gib: float | None = None
    bf16_native: bool | None = None  # compute capability >= 8.0
    bf16_torch_supported: bool | None = None  # torch.cuda.is_bf16_supported() (counts emulation)


@dataclass(slots=True)
class Environment:
    """The library versions of the process that ran the case."""

    python_version: str = ""
    torch_version: str = ""
    cuda_version: str = ""
    driver_version: str = ""
    transformers_version: str = ""
    peft_version: str = ""
    bitsandbytes_version: str = ""
    accelerate_version: str = ""
    trl_version: str = ""  # TRL, whose SFTTrainer is the `sft` engine


@dataclass(slots=True)
class Weights:
    """Parameter counts and the bytes of weights, adapters and optimizer state."""

    total_params: int | None = None  # as peft counts them (4-bit packed weights counted x2); a
    # load-only case: the model without adapters, by the same counter
    trainable_params: int | None = None
    trainable_dtypes: str = ""  # e.g. "float32" or "bfloat16,float32"
    trainable_bytes: int | None = None  # the LoRA adapters' parameters (their gradients match)
    optimizer_state_bytes: int | None = None  # every tensor in optimizer.state after training
    quantized_params: int | None = None  # parameters held in 4-bit
    weight_bytes: int | None = None  # all parameters + buffers + quantization statistics
    quant_data_bytes: int | None = None  # packed 4-bit payload
    quant_stats_bytes: int | None = None  # absmax (+ nested absmax, code, offset with DQ)
    footprint_bytes: int | None = None  # model.get_memory_footprint() (omits quant stats)
    # Computed, not measured: the exact bytes of the 16-bit weights on the meta device, set only on
    # a row judged "does not fit at load" without loading (a shape with no 16-bit checkpoint).
    computed_weight_bytes: int | None = None


@dataclass(slots=True)
class StageMemory:
    """Memory by stage (allocator on CUDA; process RSS on the CPU)."""

    load_alloc_gib: float | None = None
    load_reserved_gib: float | None = None
    prepare_alloc_gib: float | None = None
    prepare_reserved_gib: float | None = None
    lora_alloc_gib: float | None = None
    lora_reserved_gib: float | None = None
    # load-only cases (the `weights` family): the load's own peaks and the device after it; the
    # training peaks below stay None, so no reader takes a load for a training step
    load_peak_alloc_gib: float | None = None  # max_memory_allocated during from_pretrained
    load_peak_reserved_gib: float | None = None  # max_memory_reserved during from_pretrained
    load_nvml_gib: float | None = None  # device used after load (NVML, context included)
    peak_alloc_gib: float | None = None  # training peak, max_memory_allocated
    peak_reserved_gib: float | None = None  # training peak, max_memory_reserved
    nvml_base_gib: float | None = None  # device used before this process allocated anything
    nvml_peak_gib: float | None = None  # device used at its highest sample (context included)
    # What the two above cover (measure.NVML_DEVICE / NVML_PROCESS): the device, or, side by side,
    # this process's own line of NVML's per-process list (base 0).
    nvml_scope: str | None = None
    nvml_own_peak_gib: float | None = None  # this process's own line at its highest sample
    cpu_peak_rss_gib: float | None = None  # ru_maxrss of the child


@dataclass(slots=True)
class Training:
    """The steps: per-step series, their summary, device time and MFU, the losses."""

    tokens_per_step: int | None = None
    step_ms: list[float] = field(default_factory=list)  # measured steps only
    losses: list[float] = field(default_factory=list)  # every step, warm-up included
    grad_norms: list[float] = field(default_factory=list)  # every step, warm-up included
    step_ms_median: float | None = None
    step_ms_spread: float | None = None  # (p90 - p10) / median of measured steps
    tokens_per_s: float | None = None  # tokens_per_step / median step time
    step_ms_rel_iqr: float | None = None  # (p75 - p25) / median of measured steps
    stop_reason: str | None = None  # why measuring stopped: target, budget, cap (adaptive) or fixed
    # device time from a profiler window after the measured steps (CUDA only; engines.devicetime)
    kernel_ms_per_step: float | None = None  # sum of compute kernel durations per step
    kernels_per_step: float | None = None  # kernel launches per step
    comm_ms_per_step: float | None = None  # sum of NCCL kernel durations per step (waits included)
    gpu_busy: float | None = None  # union of device busy time / median measured wall step (0..1)
    host_bound: bool | None = None  # gpu_busy below devicetime.HOST_BOUND_BELOW
    profiled_steps: int | None = None  # optimizer steps profiled (in losses, not in step_ms)
    slowdown_ms_per_step: float | None = None  # test-only knob: device work added per step
    # model FLOPs utilization (qlora_core.measurement.flops), against the GPU the kernels ran on (an emulated
    # T4 runs on the host GPU: its MFU is the host's), at the compute dtype's dense peak
    flops_per_step: float | None = None  # the FLOPs model's count for one optimizer step
    mfu: float | None = None  # flops_per_step / median wall step / peak
    mfu_kernel: float | None = None  # flops_per_step / kernel time per step / peak
    first_loss: float | None = None
    final_loss: float | None = None
    first_nonfinite_step: int | None = None  # 0-based index into losses; None if all finite


@dataclass(slots=True)
class Quality:
    """Held-out quality (data == "text")."""

    ppl_before: float | None = None  # held-out perplexity after load, before training
    ppl_after: float | None = None  # held-out perplexity after training


@dataclass(slots=True)
class MixedPrecision:
    """Mixed precision as the engine ran it (the engine itself is the case's `engine` field)."""

    autocast: str = ""  # dtype forward and loss ran under torch.autocast: "bf16", "fp16" or "none"
    grad_scaler: bool | None = None  # an fp16 gradient scaler scaled the loss
    scaler_skipped_steps: int | None = None  # steps the scaler skipped on overflow; None: no scaler
    scaler_final_scale: float | None = None  # the scaler's loss scale after the last step
    trained_dtypes: str = ""  # trainable parameters' dtypes as trained (SFTTrainer casts to bf16)
    # the device type holding most parameter bytes once the engine wrapped the model, before the
    # first step: "cpu" under FSDP's CPU offload (Case.cpu_offload), "cuda" otherwise on a GPU
    params_on_in_training: str = ""


@dataclass(slots=True)
class Ranks:
    """Multi-GPU: a case of num_gpus > 1 is one row merged from its ranks
    (`qlora_core.process.distributed.merge_ranks`). Its single-GPU fields say: memory peaks are the
    max over ranks (what each GPU must hold), step_ms the slowest rank's time per step,
    tokens_per_step and tokens_per_s over all ranks; the lists below are indexed by rank."""

    world_size: int | None = None  # ranks launched; None for a single-process case
    failed_rank: int | None = None  # the rank whose outcome is the case's; None if every rank ended ok
    rank_statuses: list[str] = field(default_factory=list)
    rank_peak_alloc_gib: list[float | None] = field(default_factory=list)
    rank_peak_reserved_gib: list[float | None] = field(default_factory=list)
    rank_nvml_peak_gib: list[float | None] = field(default_factory=list)
    rank_cpu_peak_rss_gib: list[float | None] = field(default_factory=list)
    rank_step_ms: list[list[float]] = field(default_factory=list)  # each rank's measured steps
    # the device type holding the weights right after the load: "cuda", "cpu", or "meta" for a rank
    # that loaded none (FSDP rank-0-only loading, `distributed.loads_on_rank0_only`)
    loaded_on: str = ""
    rank_loaded_on: list[str] = field(default_factory=list)
    peak_alloc_gib_sum: float | None = None  # over ranks
    peak_reserved_gib_sum: float | None = None
    nvml_peak_gib_sum: float | None = None


@dataclass(slots=True)
class Needed:
    """What an OOM needs: a row that ran out of memory under an emulated cap keeps its status, and
    gains what the same case measured when rerun uncapped on the host GPU
    (`qlora_core.process.oom_need`); None when not rerun. These are not the capped run's figures:
    readers label them "needed (measured uncapped on <needed_on>)". NEEDED_OF maps each to its
    field."""

    needed_status: str | None = None  # the rerun's status: ok, or oom when even the host could not
    needed_on: str | None = None  # the GPU the rerun ran on (its gpu_name; "cpu" on the CPU)
    needed_peak_alloc_gib: float | None = None
    needed_peak_reserved_gib: float | None = None
    needed_nvml_peak_gib: float | None = None
    needed_nvml_base_gib: float | None = None
    needed_load_alloc_gib: float | None = None
    needed_prepare_alloc_gib: float | None = None
    needed_lora_alloc_gib: float | None = None
    needed_optimizer_state_bytes: int | None = None
    needed_weight_bytes: int | None = None


@dataclass(slots=True)
class Result:
    """One case's outcome and measurements: its identity and status here, the measurements in
    groups. Case fields are copied in flat by `row`, prefixed by nothing."""

    # identity
    case_id: str
    case_hash: str
    profile: str
    case: dict[str, Any]
    families: str = ""  # matrix families this case serves, comma-separated ("factorial,ladder:2")
    overrides: str = ""  # run-level forced fields (`--force`), e.g. "prepare_kbit=True"; "" if none
    repeat: int = 0  # 0-based: which fresh-process repeat of the case this row is (`--repeat N`)
    status: str = Status.CRASHED.value
    reason: str = ""  # why it ended as it did: the stage and the error, or how the child died
    traceback: str = ""  # the formatted traceback of the exception that ended the case; "" if none
    schema_version: int = RESULT_SCHEMA_VERSION
    started_at: str = ""
    finished_at: str = ""

    # the measurements, group by group (each group's fields follow the ones above, in this order)
    timing: Timing = field(default_factory=Timing)
    hardware: Hardware = field(default_factory=Hardware)
    environment: Environment = field(default_factory=Environment)
    weights: Weights = field(default_factory=Weights)
    memory: StageMemory = field(default_factory=StageMemory)
    training: Training = field(default_factory=Training)
    quality: Quality = field(default_factory=Quality)
    precision: MixedPrecision = field(default_factory=MixedPrecision)
    ranks: Ranks = field(default_factory=Ranks)
    needed: Needed = field(default_factory=Needed)

    def flat(self) -> dict[str, Any]:
        """The stored record: every field by its column name, in `RESULT_FIELDS` order (deep
        copies, as `dataclasses.asdict` makes)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _GROUP_CLASSES:
                out.update(dataclasses.asdict(value))
            else:
                out[f.name] = copy.deepcopy(value)
        return out

    def to_json(self) -> str:
        return json.dumps(self.flat(), sort_keys=False, allow_nan=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Result:
        """The Result of its flat fields (`flat`'s dict; a group's fields may be left out, as can
        any field with a default). A key that is not a field is refused, never dropped unseen: a
        stored row goes through `reports.run.folder.result_from_row`, which checks its schema
        version and names such keys."""
        unknown = unknown_fields(data)
        if unknown:
            raise ValueError(
                f"not a field of Result: {', '.join(unknown)} (row of schema_version"
                f" {data.get('schema_version')!r}; this qlora-bench writes {RESULT_SCHEMA_VERSION})"
            )
        top = {k: v for k, v in data.items() if k not in _GROUP_OF}
        groups = {
            name: group(**{k: v for k, v in data.items() if _GROUP_OF.get(k) == name})
            for name, group in _GROUP_CLASSES.items()
        }
        return cls(**top, **groups)

    @classmethod
    def for_case(cls, case: Case, profile: str, families: str = "") -> Result:
        return cls(
            case_id=case.id, case_hash=case.hash, profile=profile, case=case.to_dict(), families=families
        )

    def get_field(self, name: str) -> Any:
        """The field `name` (a column name of `RESULT_FIELDS`), from its group or the top."""
        group = _GROUP_OF.get(name)
        if group is not None:
            return getattr(getattr(self, group), name)
        if name not in RESULT_FIELDS:
            raise AttributeError(f"not a field of Result: {name}")
        return getattr(self, name)

    def set_fields(self, values: Mapping[str, Any]) -> None:
        """Set fields by their column names (`RESULT_FIELDS`), each in its group or at the top."""
        unknown = unknown_fields(values)
        if unknown:
            raise AttributeError(f"not a field of Result: {', '.join(unknown)}")
        for name, value in values.items():
            group = _GROUP_OF.get(name)
            setattr(getattr(self, group) if group is not None else self, name, value)

    def replaced(self, **values: Any) -> Result:
        """A copy with the fields `values` (by column name) changed, as `dataclasses.replace`."""
        out = copy.deepcopy(self)
        out.set_fields(values)
        return out

    def row(self) -> dict[str, Any]:
        """Flat dict for a DataFrame row: the case's fields beside the measurements."""
        out = self.flat()
        case = out.pop("case")
        case["target_modules"] = ",".join(case["target_modules"])
        case["extra"] = ",".join(f"{k}={v}" for k, v in case["extra"])
        for key, value in case.items():
            out.setdefault(key, value)
        return out


_GROUP_CLASSES: dict[str, type[Any]] = {
    name: hint
    for name, hint in typing.get_type_hints(Result).items()
    if isinstance(hint, type) and dataclasses.is_dataclass(hint)
}
"""Result's group attribute -> its dataclass, in Result's order."""
_GROUP_OF: dict[str, str] = {
    f.name: name for name, group in _GROUP_CLASSES.items() for f in dataclasses.fields(group)
}
"""Column name of a grouped field -> the Result attribute of its group."""

RESULT_FIELDS: tuple[str, ...] = tuple(
    column
    for f in dataclasses.fields(Result)
    for column in (
        [g.name for g in dataclasses.fields(_GROUP_CLASSES[f.name])] if f.name in _GROUP_CLASSES else [f.name]
    )
)
"""Every column of a stored Result, in its order: the top-level fields, then each group's."""


def _field_types() -> dict[str, Any]:
    types: dict[str, Any] = {}
    for name, hint in typing.get_type_hints(Result).items():
        types.update(typing.get_type_hints(_GROUP_CLASSES[name]) if name in _GROUP_CLASSES else {name: hint})
    return types


RESULT_FIELD_TYPES: dict[str, Any] = _field_types()
"""Column name -> its field's annotation (resolved), in `RESULT_FIELDS` order: the frame's types."""


def unknown_fields(data: Mapping[str, Any]) -> list[str]:
    """The keys of `data` that are not Result fields, in its order."""
    return [key for key in data if key not in RESULT_FIELD_TYPES]


NEEDED_OF: dict[str, str] = {
    f.name: f.name.removeprefix("needed_")
    for f in dataclasses.fields(Needed)
    if f.name not in ("needed_status", "needed_on")
}
"""needed_* field -> the measured field of the uncapped rerun it copies (needed_peak_alloc_gib ->
peak_alloc_gib); needed_status and needed_on say how the rerun ended and where."""


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def result_file_name(case_hash: str, repeat: int = 0) -> str:
    """The name of a run's own Result file in a run folder's cases/: `<hash>.json` for the first
    repeat (as before repeats existed), `<hash>-r2.json`, `-r3`, ... for the others."""
    return f"{case_hash}{repeat_suffix(repeat)}.json"


def repeat_suffix(repeat: int) -> str:
    """ "" for the first repeat, "-r2", "-r3", ... for the others (test ids, progress lines)."""
    return "" if repeat == 0 else f"-r{repeat + 1}"


def read_result(path: Path) -> Result:
    return Result.from_dict(json.loads(path.read_text()))
