"""The fit advisor's memory model: a case's device peak (NVML's peak minus what the device used
before the process) from the suite's own measured rows: exact static terms plus activation
coefficients (`ACTIVATION_TERMS`) fitted by least squares; `trained_batch` gives a row's tokens.
See docs/fit.md#the-model and docs/fit.md#the-formula.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from qlora_core.models.registry import REAL_MODEL, SHAPES, ShapeSpec
from reports.run.frame import RunData

GIB = 2**30
GRAD_BYTES_PER_PARAM = 4  # the adapters train in fp32 (measured: trainable_dtypes)
ENGINE_POOLS: dict[str, str] = {"loop": "loop+trainer", "trainer": "loop+trainer", "sft": "sft"}
ACTIVATION_TERMS = (
    "constant (GiB)",
    "vocab",
    "layers x hidden",
    "layers x hidden, prepared 4-bit",
    "layers x (hidden + intermediate), no checkpointing",
    "layers x (hidden + intermediate), int8 weights, checkpointed",
)
# The engines built on transformers.Trainer (SFTTrainer is one): they size a step by the GPUs they see.
TRAINER_ENGINES = frozenset({"trainer", "sft"})
VISIBLE_GPUS = "child_gpus_visible"
"""Column `run_frame` adds: the GPUs each row's child saw. The row's own `gpus_visible` where it
has one (`request.child_env` shows a one-GPU case one GPU); a row from before that field, the GPUs
its session saw (environment.json's gpus_present: its runner passed CUDA_VISIBLE_DEVICES on
unchanged); None when neither was recorded."""
_SHAPE_OF_MODEL = {REAL_MODEL: "smollm2-135m"}  # the real model has the registered SmolLM2 shape
_STATIC_FIELDS = (
    "model",
    "quant_type",
    "double_quant",
    "compute_dtype",
    "quant_storage",
    "prepare_kbit",
    "lora_r",
)


class FitError(ValueError):
    """The rows cannot give a prediction; the message says which rows are missing."""


def shape_of(model: str) -> ShapeSpec | None:
    return SHAPES.get(_SHAPE_OF_MODEL.get(model, model))


def static_key(fields: Mapping[str, Any]) -> tuple[Any, ...]:
    """What decides the LoRA stage's allocation: the weights, their quantization and the adapters."""
    return tuple(str(fields[name]) for name in _STATIC_FIELDS)


def _prepared(fields: Mapping[str, Any]) -> bool:
    """A 4-bit model through prepare_model_for_kbit_training (its norms, embeddings in fp32)."""
    return fields["quant_type"] != "none" and bool(fields["prepare_kbit"])


def run_frame(run: RunData) -> pd.DataFrame:
    """A run's results as the fit reads them: each row with the GPUs its child saw (`VISIBLE_GPUS`)."""
    session = run.environment.get("gpus_present")
    rows = run.results
    if "gpus_visible" not in rows:
        return rows.assign(**{VISIBLE_GPUS: session})
    own = rows["gpus_visible"].astype(object)
    return rows.assign(**{VISIBLE_GPUS: own.where(own.notna(), session)})


def trained_batch(rec: Mapping[str, Any]) -> tuple[int | None, str]:
    """The rows one device trained per micro-batch, and a note when they are not the case's batch;
    (None, why) when the row is not one device's measurement.

    transformers' `TrainingArguments` outside a distributed launch sets `n_gpu` to every GPU the
    process sees and `train_batch_size` to `per_device_train_batch_size` x `n_gpu`; `Trainer` wraps
    the model in `nn.DataParallel` for n_gpu > 1 unless it is loaded in 4 or 8 bits. So a
    single-process Trainer case with a quantized model on a session that saw N GPUs trained N x its
    batch on one GPU (the committed multigpu-t4x2 one-card rows: 8 rows a step, their logs'
    samples/steps, and a loss twice the b1 row's, as `num_items_in_batch` is divided by n_gpu);
    a 16-bit one was split over the GPUs by DataParallel."""
    batch = int(rec["batch_size"])
    gpus = int(_num(rec.get(VISIBLE_GPUS)) or 1)
    if str(rec["engine"]) not in TRAINER_ENGINES or int(rec.get("num_gpus") or 1) != 1 or gpus <= 1:
        return batch, ""
    if rec["quant_type"] == "none":
        return None, f"a 16-bit Trainer case that saw {gpus} GPUs ran under DataParallel on all of them"
    why = f"trained {batch * gpus} rows a step, not its case's {batch}: Trainer saw {gpus} GPUs (n_gpu)"
    return batch * gpus, why


def activation_features(shape: ShapeSpec, fields: Mapping[str, Any]) -> np.ndarray:
    """A case's activation terms (`ACTIVATION_TERMS`): 1, then the per-token ones times its tokens
    per micro-batch, in GiB per byte of coefficient."""
    tokens = int(fields["batch_size"]) * int(fields["seq_len"])
    layers_hidden = shape.num_layers * shape.hidden_size
    prepared = layers_hidden if _prepared(fields) else 0
    layer_inputs = shape.num_layers * (shape.hidden_size + shape.intermediate_size)
    checkpointed = bool(fields["gradient_checkpointing"])
    no_gc = 0 if checkpointed else layer_inputs
    int8_kept = layer_inputs if checkpointed and fields["quant_type"] == "int8" else 0
    terms = [shape.vocab_size, layers_hidden, prepared, no_gc, int8_kept]
    per_token = tokens * np.array(terms, dtype=float) / GIB
    return np.concatenate([[1.0], per_token])


def lm_head_copy_gib(fields: Mapping[str, Any], shape: ShapeSpec) -> float:
    """prepare_model_for_kbit_training leaves lm_head in fp32; autocast keeps a 16-bit copy."""
    copied = _prepared(fields) and fields["compute_dtype"] != "fp32"
    return shape.vocab_size * shape.hidden_size * 2 / GIB if copied else 0.0


@dataclass(frozen=True)
class MemoryRow:
    """One measured configuration: the case's fields and what its device held."""

    case_id: str
    fields: dict[str, Any]
    footprint_gib: float
    context_gib: float
    static_gib: float
    trainable_params: int
    optimizer_bytes: float | None
    source: str
    """"measured", or "needed (measured uncapped on GPU)" for an OOM row's uncapped rerun; then
    `trained_batch`'s note when the device trained another batch than the case's."""
    trained_batch: int
    """Rows its device trained per micro-batch (`trained_batch`): what the activation terms see."""

    @property
    def pool(self) -> str:
        return ENGINE_POOLS.get(str(self.fields["engine"]), str(self.fields["engine"]))

    @property
    def trained(self) -> dict[str, Any]:
        """The row's fields with the batch its device trained."""
        return {**self.fields, "batch_size": self.trained_batch}

    @property
    def tokens(self) -> int:
        return self.trained_batch * int(self.fields["seq_len"])


def _num(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _row(rec: Mapping[str, Any]) -> MemoryRow | None:
    """A usable row, or None: a single-GPU run on a known shape with NVML, allocator and LoRA stage."""
    if shape_of(str(rec["model"])) is None or int(rec.get("num_gpus") or 1) != 1:
        return None
    static, trainable, base = (
        _num(rec.get("lora_alloc_gib")),
        _num(rec.get("trainable_params")),
        _num(rec.get("nvml_base_gib")),
    )
    if rec["status"] == "ok":
        peak, reserved, opt, source = (
            rec["nvml_peak_gib"],
            rec["peak_reserved_gib"],
            rec["optimizer_state_bytes"],
            "measured",
        )
    elif rec["status"] == "oom" and rec.get("needed_status") == "ok":
        # The rerun's own device reading before its process, as its peak's baseline.
        base = _num(rec.get("needed_nvml_base_gib"))
        peak, reserved = rec.get("needed_nvml_peak_gib"), rec.get("needed_peak_reserved_gib")
        opt, source = (
            rec.get("needed_optimizer_state_bytes"),
            f"needed (measured uncapped on {rec.get('needed_on')})",
        )
    else:
        return None
    peak, reserved = _num(peak), _num(reserved)
    batch, note = trained_batch(rec)
    if None in (static, trainable, base, peak, reserved, batch):
        return None
    return MemoryRow(
        case_id=str(rec["case_id"]),
        fields=dict(rec),
        footprint_gib=peak - base,  # type: ignore[operator]
        context_gib=peak - base - reserved,  # type: ignore[operator]
        static_gib=static,  # type: ignore[arg-type]
        trainable_params=int(trainable),  # type: ignore[arg-type]
        optimizer_bytes=_num(opt),
        source=f"{source}; {note}" if note else source,
        trained_batch=batch,  # type: ignore[arg-type]
    )


def memory_rows(frames: Iterable[pd.DataFrame]) -> list[MemoryRow]:
    """The usable rows of results frames, one per case id (the first seen: repeats are folded)."""
    rows: dict[str, MemoryRow] = {}
    for frame in frames:
        for rec in frame.to_dict("records"):
            row = _row(rec)
            if row is not None:
                rows.setdefault(row.case_id, row)
    return list(rows.values())


def lora_stages(frames: Iterable[pd.DataFrame]) -> dict[tuple[Any, ...], tuple[float, int]]:
    """Weight configuration -> (LoRA stage GiB, trainable params) from every row that got that far,
    whatever its status (an OOM in training still measured its weights)."""
    stages: dict[tuple[Any, ...], tuple[float, int]] = {}
    for frame in frames:
        for rec in frame.to_dict("records"):
            static, trainable = _num(rec.get("lora_alloc_gib")), _num(rec.get("trainable_params"))
            if static is not None and trainable is not None and int(rec.get("num_gpus") or 1) == 1:
                stages.setdefault(static_key(rec), (static, int(trainable)))
    return stages


@dataclass(frozen=True)
class Prediction:
    footprint_gib: float
    parts: dict[str, float]
    """GiB per term of the model (context, static, gradients+optimizer, lm_head copy, activations)."""


@dataclass(frozen=True)
class MemoryModel:
    pool: str
    context_gib: float
    optimizer_bytes_per_param: dict[str, float]
    activation_coefficients: tuple[float, ...]
    identifiable: np.ndarray
    """Rows of the per-token design the fit spans (a query outside them is not predictable)."""
    statics: dict[tuple[Any, ...], tuple[float, int]] = field(default_factory=dict)
    rows: int = 0

    def predict(self, fields: Mapping[str, Any], static: tuple[float, int] | None = None) -> Prediction:
        """The footprint of a case (its fields as a Case's `to_dict()` or a results row).

        `static`: the LoRA stage's (GiB, trainable params); default: from a fitted row of the same
        weight configuration. FitError names what is missing."""
        shape = shape_of(str(fields["model"]))
        if shape is None:
            raise FitError(f"model {fields['model']!r} has no registered shape")
        static = static or self.statics.get(static_key(fields))
        if static is None:
            raise FitError(
                "no measured row (any status: the LoRA stage is enough) of this weight configuration: "
                + ", ".join(f"{k}={fields[k]}" for k in _STATIC_FIELDS)
            )
        optimizer = str(fields["optimizer"])
        if optimizer not in self.optimizer_bytes_per_param:
            raise FitError(f"no measured row gives optimizer {optimizer!r}'s bytes per trainable parameter")
        x = activation_features(shape, fields)
        if not _spanned(self.identifiable, x):
            raise FitError(
                "the fitted rows do not span this case's activation terms (e.g. no row without"
                " checkpointing, no other int8 row, or too few models to separate vocab from"
                " layers x hidden)"
            )
        static_gib, trainable = static
        parts = {
            "context": self.context_gib,
            "static (weights, adapters)": static_gib,
            "gradients + optimizer": trainable
            * (GRAD_BYTES_PER_PARAM + self.optimizer_bytes_per_param[optimizer])
            / GIB,
            "lm_head 16-bit copy": lm_head_copy_gib(fields, shape),
            "activations": float(x @ np.array(self.activation_coefficients)),
        }
        return Prediction(sum(parts.values()), parts)


def _spanned(design: np.ndarray, x: np.ndarray) -> bool:
    if not x.any():
        return True
    if design.size == 0:
        return False
    return np.linalg.matrix_rank(np.vstack([design, x])) == np.linalg.matrix_rank(design)


def fit(rows: list[MemoryRow]) -> MemoryModel:
    """Fit the model to rows of one engine pool. FitError when they cannot fit it."""
    if not rows:
        raise FitError("no usable measured rows (ok on a GPU, or an OOM with its uncapped rerun)")
    pools = {row.pool for row in rows}
    if len(pools) != 1:
        raise FitError(f"rows of several engine pools {sorted(pools)}: fit each alone")
    per_param: dict[str, list[float]] = {}
    for row in rows:
        if row.optimizer_bytes is not None and row.trainable_params:
            per_param.setdefault(str(row.fields["optimizer"]), []).append(
                row.optimizer_bytes / row.trainable_params
            )
    optimizer_bpp = {name: statistics.median(values) for name, values in per_param.items()}
    context = statistics.median(row.context_gib for row in rows)
    usable = [row for row in rows if str(row.fields["optimizer"]) in optimizer_bpp]
    if not usable:
        raise FitError("no row with a measured optimizer state")
    design, target = [], []
    for row in usable:
        shape = shape_of(str(row.fields["model"]))
        assert shape is not None  # memory_rows keeps known shapes only
        fixed = context + row.static_gib + lm_head_copy_gib(row.fields, shape)
        fixed += (
            row.trainable_params * (GRAD_BYTES_PER_PARAM + optimizer_bpp[str(row.fields["optimizer"])]) / GIB
        )
        design.append(activation_features(shape, row.trained))
        target.append(row.footprint_gib - fixed)
    matrix = np.array(design)
    coefficients, *_ = np.linalg.lstsq(matrix, np.array(target), rcond=None)
    statics = {static_key(row.fields): (row.static_gib, row.trainable_params) for row in rows}
    return MemoryModel(
        pool=next(iter(pools)),
        context_gib=context,
        optimizer_bytes_per_param=optimizer_bpp,
        activation_coefficients=tuple(float(c) for c in coefficients),
        identifiable=matrix,
        statics=statics,
        rows=len(usable),
    )


@dataclass(frozen=True)
class HeldOut:
    """One row predicted by the model fitted to all the others."""

    row: MemoryRow
    predicted_gib: float | None
    why_not: str = ""

    @property
    def error(self) -> float | None:
        if self.predicted_gib is None:
            return None
        return abs(self.predicted_gib - self.row.footprint_gib) / self.row.footprint_gib


def configuration(row: MemoryRow) -> tuple[Any, ...]:
    """What a row measured, whichever engine of its pool ran it (the loop and Trainer twins)."""
    step = ("batch_size", "seq_len", "gradient_checkpointing", "optimizer")
    return (row.pool, static_key(row.fields), *(str(row.trained[name]) for name in step))


def leave_one_out(rows: list[MemoryRow]) -> list[HeldOut]:
    """Each row predicted by a fit to the rest of its pool, leaving out with it every row of the
    same configuration (else a twin from another engine would predict it). Its static part is its
    own LoRA stage (exact, measured before training begins: not what is predicted)."""
    out = []
    for row in rows:
        held = configuration(row)
        rest = [other for other in rows if other.pool == row.pool and configuration(other) != held]
        try:
            model = fit(rest)
            static = (row.static_gib, row.trainable_params)
            predicted = model.predict(row.trained, static=static).footprint_gib
            out.append(HeldOut(row, predicted))
        except FitError as error:
            out.append(HeldOut(row, None, str(error)))
    return out


@dataclass(frozen=True)
class ErrorSummary:
    predicted: int
    not_predictable: int
    median: float | None
    max: float | None

    def meets(self, median_limit: float, max_limit: float) -> bool:
        return self.median is not None and self.median <= median_limit and (self.max or 0.0) <= max_limit


def summarize(held_out: list[HeldOut]) -> ErrorSummary:
    errors = [h.error for h in held_out if h.error is not None and math.isfinite(h.error)]
    return ErrorSummary(
        predicted=len(errors),
        not_predictable=len(held_out) - len(errors),
        median=statistics.median(errors) if errors else None,
        max=max(errors) if errors else None,
    )
