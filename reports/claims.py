"""The lesson's claims as data, each with a pure check over one run's measurements.

A `Claim` quotes the few words of the lesson it checks and states what the lesson says
(`expected`, with its tolerance). Those numbers are hypotheses: a check never copies them into a
measured value. Its verdict comes only from measured columns of `RunData.results` and from the
measurement tables in `RunData.measurements`; where the rows are missing or did not run ok, the
verdict is `not_run` or `inconclusive` with the reason, never `holds`.

Units. The lesson writes "GB" for two things: parameters x bytes (its 7B table, the formula, the
budget's model row: 10**9 bytes) and torch's `memory_allocated() / 1024**3` (its "Allocated:
2.84 GB", a GiB). Each claim's `measures` says which one it compares; `measured` shows both where
it matters. Allocator columns (`*_gib`) are GiB; `*_bytes` columns are bytes.

Rows of the results frame are selected with a few shared helpers (`family_rows`, `select`,
`pairs`, ...), which `reports.tables` and `reports.plots` reuse.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import pandas as pd

from qlora_core.gpus import PROFILES, GpuProfile
from qlora_core.result import RESULT_FIELDS
from qlora_core.spec import FIELD_NAMES, LESSON_TARGET_MODULES
from reports.frame import RunData

GB = 1e9  # the lesson's "GB" where it multiplies parameters by bytes (7e9 x 4 bytes = 28 GB)
GIB = 2**30  # torch's "GB" (/ 1024**3) and every `_gib` column
LESSON_7B_PARAMS = 7e9  # the lesson's "7B model"
SEVEN_B_CLASS = (6.0e9, 9.0e9)  # base parameter counts that stand for the lesson's 7-8B models
SEVEN_B_EXACT = (6.5e9, 7.5e9)  # a model whose 4-bit bytes per parameter may stand for "7B"

OK_ONLY: frozenset[str] = frozenset({"ok"})
# Load-stage columns (weights, parameter counts, dtypes, load/prepare/LoRA memory) are measured
# before training starts, so they stay valid when training later ran out of memory or went NaN.
LOADED: frozenset[str] = frozenset({"ok", "oom", "nan"})

# Fields that define "the same point": two rows equal on all of them except the ones a
# comparison varies measured the same workload.
POINT_FIELDS: tuple[str, ...] = (
    "profile",
    "model",
    "quant_type",
    "double_quant",
    "quant_storage",
    "compute_dtype",
    "batch_size",
    "seq_len",
    "grad_accum",
    "gradient_checkpointing",
    "prepare_kbit",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "optimizer",
    "lr",
    "warmup_steps",
    "measured_steps",
    "seed",
    "data",
    "extra",
)
QUANT_FIELDS: tuple[str, ...] = ("quant_type", "double_quant", "quant_storage", "prepare_kbit")
_SEVEN = ",".join(LESSON_TARGET_MODULES)

# Minimum relative difference treated as a real speed difference; a pair's own step-time spread
# can raise it (see `speed_noise`). Measured, not assumed: on the lent H200 the same 3B case at
# batch 1, seq 512 gave tokens/s varying by up to 30% between three runs of one day (reports/
# reference/h200-smoke and reports/reference/gate/*), while each run's own spread was often far
# smaller. Two rows from different processes are therefore not told apart below +-15%.
MIN_SPEED_NOISE = 0.15


# ---------------------------------------------------------------------------------------------
# Data model
# ---------------------------------------------------------------------------------------------
class Verdict(str, Enum):
    """What the measurements say about a claim."""

    HOLDS = "holds"
    REFUTED = "refuted"
    INCONCLUSIVE = "inconclusive"
    NOT_RUN = "not_run"


@dataclass(frozen=True)
class Evaluation:
    """One verdict for one condition of a claim."""

    verdict: Verdict
    measured: str
    """The measured value(s), with units; empty when nothing was measured."""
    corrected: str
    """Empty unless refuted: the statement the measurement supports."""
    evidence: tuple[str, ...]
    """Case ids (and measurement table names) the verdict rests on."""
    condition: str
    """The condition this verdict holds under (e.g. "prepare_kbit on, checkpointing on")."""
    why: str


@dataclass(frozen=True)
class ProfilePredicate:
    """Which GPU profiles a claim speaks about; callable on a `GpuProfile`."""

    description: str
    test: Callable[[GpuProfile], bool]

    def __call__(self, profile: GpuProfile) -> bool:
        return self.test(profile)


ON_GPU = ProfilePredicate("a GPU profile (allocator memory and GPU speed)", lambda p: p.is_gpu)
ON_T4 = ProfilePredicate("profile t4", lambda p: p.name == "t4")
ON_A100 = ProfilePredicate("an A100 profile (a100-40gb, a100-80gb)", lambda p: p.name.startswith("a100"))


@dataclass(frozen=True)
class Claim:
    """One statement of the lesson, what it says, and how a run checks it."""

    id: str
    section: str
    quote: str
    """The lesson's exact few words."""
    measures: str
    """What is measured, from which columns/tables, and in which unit."""
    expected: str
    """What the lesson says, with the tolerance used."""
    tolerance: float | None
    check: Callable[[RunData], list[Evaluation]]
    known_doc_error: str = ""
    """Set only after a real GPU measurement showed the lesson wrong: the corrected value."""
    applies_to: ProfilePredicate | None = None


def holds(measured: str, evidence: Iterable[str] = (), condition: str = "", why: str = "") -> Evaluation:
    return Evaluation(Verdict.HOLDS, measured, "", tuple(evidence), condition, why)


def refuted(
    measured: str, corrected: str, evidence: Iterable[str] = (), condition: str = "", why: str = ""
) -> Evaluation:
    return Evaluation(Verdict.REFUTED, measured, corrected, tuple(evidence), condition, why)


def inconclusive(
    why: str, measured: str = "", evidence: Iterable[str] = (), condition: str = ""
) -> Evaluation:
    return Evaluation(Verdict.INCONCLUSIVE, measured, "", tuple(evidence), condition, why)


def not_run(why: str, condition: str = "", evidence: Iterable[str] = ()) -> Evaluation:
    return Evaluation(Verdict.NOT_RUN, "", "", tuple(evidence), condition, why)


# ---------------------------------------------------------------------------------------------
# Row selectors and formatting, shared with reports.tables and reports.plots
# ---------------------------------------------------------------------------------------------
_COLUMNS: tuple[str, ...] = tuple(
    dict.fromkeys([c for c in RESULT_FIELDS if c != "case"] + list(FIELD_NAMES))
)


def frame(run: RunData) -> pd.DataFrame:
    """The run's results with every Result and Case column present (an empty run has none)."""
    df = run.results
    missing = [c for c in _COLUMNS if c not in df.columns]
    if missing:
        df = df.assign(**{c: None for c in missing})
    return df


def num(values: pd.Series) -> pd.Series:
    """A column as floats (None and junk become NaN)."""
    return pd.to_numeric(values, errors="coerce")


def fval(row: pd.Series, col: str) -> float | None:
    """One cell as a float, None when absent or not a number."""
    value = row.get(col)
    if value is None or isinstance(value, (bool, np.bool_)):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def truthy(value: Any) -> bool | None:
    """A boolean cell (bool, "True"/"False" from a CSV) as bool; None when unknown."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return {"true": True, "false": False, "1": True, "0": False}.get(value.strip().lower())
    return bool(value)


def present(values: pd.Series) -> pd.Series:
    """Mask of cells that hold a measurement (not None/NaN, not an empty string)."""
    return values.notna() & (values.astype(str).str.strip() != "")


def ids(rows: pd.DataFrame) -> tuple[str, ...]:
    """Case ids of `rows`, in order, without repeats."""
    return tuple(dict.fromkeys(str(c) for c in rows["case_id"])) if len(rows) else ()


def family_rows(df: pd.DataFrame, tag: str) -> pd.DataFrame:
    """Rows that serve matrix family `tag` ("sweep", "ladder:2"); a tag ending in ':' matches
    every step of that family ("ladder:")."""
    if df.empty:
        return df
    tags = df["families"].fillna("").astype(str).str.split(",")
    if tag.endswith(":"):
        mask = tags.map(lambda ts: any(t.strip().startswith(tag) for t in ts))
    else:
        mask = tags.map(lambda ts: tag in [t.strip() for t in ts])
    return df[mask.astype(bool)]


def model_rows(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Rows of the model `name` (a shape name, or a hub id / path whose last part starts with it)."""
    if df.empty:
        return df
    last = df["model"].astype(str).str.rstrip("/").str.split("/").str[-1].str.lower()
    return df[last.str.startswith(name.lower())]


def quantized(df: pd.DataFrame, quant_type: str | None = None) -> pd.DataFrame:
    """4-bit rows (optionally of one quant type)."""
    if df.empty:
        return df
    mask = df["quant_type"] != "none" if quant_type is None else df["quant_type"] == quant_type
    return df[mask]


def sixteen_bit(df: pd.DataFrame) -> pd.DataFrame:
    """16-bit LoRA reference rows (quant_type none)."""
    return df[df["quant_type"] == "none"] if not df.empty else df


def on_gpu(df: pd.DataFrame) -> pd.DataFrame:
    """Rows measured on CUDA (memory columns there are allocator readings, not process RSS)."""
    return df[df["device"] == "cuda"] if not df.empty else df


def status_summary(rows: pd.DataFrame) -> str:
    """Count of statuses, like "2 oom, 1 crashed"."""
    counts = rows["status"].astype(str).value_counts()
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def select(
    rows: pd.DataFrame,
    what: str,
    cols: Sequence[str] = (),
    *,
    condition: str = "",
    statuses: frozenset[str] = OK_ONLY,
) -> pd.DataFrame | Evaluation:
    """`rows` that ran with a status in `statuses` and measured every column in `cols`.

    When none do, the Evaluation that says so: not_run when there are no such rows at all,
    inconclusive when they ran but failed or did not measure the columns.
    """
    if rows.empty:
        return not_run(f"no {what} rows in this run", condition=condition)
    ran = rows[rows["status"].isin(statuses)]
    if ran.empty:
        return inconclusive(
            f"{what} rows did not run ok ({status_summary(rows)}): nothing measured to compare",
            evidence=ids(rows),
            condition=condition,
        )
    for col in cols:
        ran = ran[present(ran[col])]
    if ran.empty:
        return inconclusive(
            f"{what} rows ({status_summary(rows)}) have no {', '.join(cols)} measurement",
            evidence=ids(rows),
            condition=condition,
        )
    return ran


def base_params(row: pd.Series) -> float | None:
    """Frozen (base model) parameters of a row: peft's all-params count minus the adapters."""
    total, trainable = fval(row, "total_params"), fval(row, "trainable_params")
    if total is None:
        return None
    return total - (trainable or 0.0)


_NAME_SIZE = re.compile(r"(\d+(?:\.\d+)?)b(?![a-z])")


def model_sizes(df: pd.DataFrame) -> dict[str, tuple[float, str]]:
    """Base parameter count per model and where it came from: "measured" (total_params of any
    row that loaded it) or "name" (the model's name, e.g. "llama-3.1-8b", where no row measured
    it, as when only a 16-bit row ran that failed at load)."""
    out: dict[str, tuple[float, str]] = {}
    for model, rows in df.groupby("model", sort=False):
        counts = [p for p in (base_params(r) for _, r in rows.iterrows()) if p]
        if counts:
            out[str(model)] = (float(np.median(counts)), "measured")
            continue
        match = _NAME_SIZE.search(str(model).lower().split("/")[-1])
        if match:
            out[str(model)] = (float(match.group(1)) * 1e9, "name")
    return out


def seven_b_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of models whose base parameter count is in the lesson's 7-8B class."""
    if df.empty:
        return df
    sizes = model_sizes(df)
    keep = [m for m, (p, _) in sizes.items() if SEVEN_B_CLASS[0] <= p < SEVEN_B_CLASS[1]]
    return df[df["model"].astype(str).isin(keep)]


LESSON_SIZED_MIN = 2.5e9  # the lesson's examples and budgets are about 3B-13B models


def lesson_sized(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Rows of models in the lesson's size range (3B and up), and a note naming the models left
    out (their overheads and ratios are not what the lesson's numbers describe)."""
    if df.empty:
        return df, ""
    sizes = model_sizes(df)
    keep = [m for m, (p, _) in sizes.items() if p >= LESSON_SIZED_MIN]
    small = sorted(set(df["model"].astype(str)) - set(keep))
    note = f"models below 2.5B params not judged: {', '.join(small)}" if small else ""
    return df[df["model"].astype(str).isin(keep)], note


def with_note(evaluation: Evaluation, note: str) -> Evaluation:
    """The evaluation with `note` appended to its why."""
    if not note:
        return evaluation
    return dataclasses.replace(evaluation, why="; ".join(filter(None, [evaluation.why, note])))


def modules_label(modules: str) -> str:
    """Target modules in words: "the seven projections" for the lesson's set, else the list."""
    return "the seven projections" if modules == _SEVEN else str(modules).replace("_proj", "")


def quant_label(row: pd.Series) -> str:
    """The weight format of a row: "nf4+dq", "fp4", "16-bit (fp16)"."""
    if row["quant_type"] == "none":
        return f"16-bit ({row['compute_dtype']})"
    return f"{row['quant_type']}{'+dq' if truthy(row['double_quant']) else ''}"


def setting(row: pd.Series) -> str:
    """The training point of a row in words: model, batch, length, dtype, checkpointing, prepare."""
    parts = [str(row["model"]), f"b{int(row['batch_size'])}"]
    if fval(row, "grad_accum") and int(row["grad_accum"]) > 1:
        parts.append(f"ga{int(row['grad_accum'])}")
    parts += [f"s{int(row['seq_len'])}", str(row["compute_dtype"])]
    text = " ".join(parts) + f", checkpointing {'on' if truthy(row['gradient_checkpointing']) else 'off'}"
    if row["quant_type"] != "none":
        text += f", prepare_kbit {'on' if truthy(row['prepare_kbit']) else 'off'}"
    if row["optimizer"] != "adamw":
        text += f", {row['optimizer']}"
    return text


def where(rows: pd.DataFrame) -> str:
    """Profile and emulation of `rows`: "profile t4, emulated on NVIDIA H200"."""
    if rows.empty:
        return ""
    text = "profile " + ",".join(sorted(set(rows["profile"].astype(str))))
    emulated = sorted(
        {str(e) for e, flag in zip(rows["emulated_on"], rows["emulated"]) if truthy(flag) and e}
    )
    if emulated:
        text += ", emulated on " + ", ".join(emulated)
    return text


def fmt_gb(nbytes: float) -> str:
    """Bytes as "5.70 GB (5.31 GiB)"; below 0.1 GB as "48.20 MB (45.97 MiB)"."""
    if abs(nbytes) < 0.1 * GB:
        return f"{nbytes / 1e6:.2f} MB ({nbytes / 2**20:.2f} MiB)"
    return f"{nbytes / GB:.2f} GB ({nbytes / GIB:.2f} GiB)"


def fmt_size(nbytes: float) -> str:
    """Bytes in the lesson's unit: "5.70 GB", or "48.20 MB" below 0.1 GB."""
    return f"{nbytes / 1e6:.2f} MB" if abs(nbytes) < 0.1 * GB else f"{nbytes / GB:.2f} GB"


def fmt_gib(gib: float) -> str:
    """GiB as "5.31 GiB (5.70 GB)"."""
    return f"{gib:.2f} GiB ({gib * GIB / GB:.2f} GB)"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _key(row: pd.Series, fields: Sequence[str]) -> tuple[Any, ...]:
    out = []
    for f in fields:
        value = row.get(f)
        if isinstance(value, float):
            value = None if math.isnan(value) else round(value, 12)
        elif isinstance(value, (np.bool_, bool)):
            value = bool(value)
        elif isinstance(value, (np.integer,)):
            value = int(value)
        out.append(value)
    return tuple(out)


def pairs(left: pd.DataFrame, right: pd.DataFrame, vary: Sequence[str]) -> list[tuple[pd.Series, pd.Series]]:
    """Each row of `left` with each row of `right` at the same point: equal on every
    `POINT_FIELDS` field except those in `vary`."""
    if left.empty or right.empty:
        return []
    fields = [f for f in POINT_FIELDS if f not in vary]
    by_key: dict[tuple[Any, ...], list[pd.Series]] = {}
    for _, r in right.iterrows():
        by_key.setdefault(_key(r, fields), []).append(r)
    return [(a, b) for _, a in left.iterrows() for b in by_key.get(_key(a, fields), [])]


def speed_noise(*rows: pd.Series) -> float:
    """Relative tokens/s difference below which two rows are not told apart: half the largest
    step-time spread ((p90 - p10) / median) of the rows, at least MIN_SPEED_NOISE."""
    spreads = [s for s in (fval(r, "step_ms_spread") for r in rows) if s is not None]
    return max([MIN_SPEED_NOISE] + [s / 2 for s in spreads])


def device_used_gib(row: pd.Series) -> float | None:
    """Device memory this process used at its peak (NVML, CUDA context included): the peak
    sample minus what the device held before the process started, when that was recorded."""
    peak = fval(row, "nvml_peak_gib")
    if peak is None:
        return None
    return peak - (fval(row, "nvml_base_gib") or 0.0)


def training_peak_gib(row: pd.Series) -> float | None:
    """The training peak a user would see: device memory used (NVML), else the allocator's
    reserved peak where NVML was not read."""
    device = device_used_gib(row)
    return device if device is not None else fval(row, "peak_reserved_gib")


def activation_gib(row: pd.Series) -> float | None:
    """Training peak minus the allocation after LoRA: activations plus adapter gradients and
    optimizer states (an upper bound on activation memory)."""
    peak, lora = fval(row, "peak_alloc_gib"), fval(row, "lora_alloc_gib")
    return None if peak is None or lora is None else peak - lora


def adapter_gib(row: pd.Series) -> tuple[float, str] | None:
    """Memory of the LoRA adapters and how it was obtained.

    On CUDA: allocator after LoRA minus after prepare (after load when prepare was not recorded).
    Elsewhere (process RSS is too coarse): the measured trainable_bytes, else trainable_params x
    bytes of the measured trainable dtype, stated as such.
    """
    if row.get("device") == "cuda":
        lora = fval(row, "lora_alloc_gib")
        before = fval(row, "prepare_alloc_gib")
        if before is None:
            before = fval(row, "load_alloc_gib")
        if lora is not None and before is not None:
            return lora - before, "allocator: lora_alloc_gib - prepare_alloc_gib"
    counted = fval(row, "trainable_bytes")
    if counted is not None:
        return counted / GIB, "trainable_bytes"
    trainable = fval(row, "trainable_params")
    dtypes = [d for d in str(row.get("trainable_dtypes") or "").split(",") if d.strip()]
    widths = [_DTYPE_BYTES.get(d.strip().replace("torch.", "")) for d in dtypes]
    if trainable is None or not widths or None in widths:
        return None
    width = max(w for w in widths if w is not None)
    return trainable * width / GIB, f"trainable_params x {width} bytes ({','.join(dtypes)})"


_DTYPE_BYTES: dict[str, int] = {
    "float32": 4,
    "float": 4,
    "float16": 2,
    "half": 2,
    "bfloat16": 2,
    "float64": 8,
    "uint8": 1,
    "int8": 1,
}


def measurement(run: RunData, name: str, cols: Sequence[str]) -> pd.DataFrame | Evaluation:
    """The measurement table `name` with columns `cols`, or a not_run saying what is missing."""
    table = run.measurements.get(name)
    if table is None or table.empty:
        return not_run(f"measurement table {name} is absent from this run")
    lacking = [c for c in cols if c not in table.columns]
    if lacking:
        return not_run(f"measurement table {name} lacks column(s) {', '.join(lacking)}")
    return table


def _within(value: float, expected: float, tol: float) -> bool:
    return abs(value - expected) <= tol * abs(expected)


def _in_range(value: float, low: float, high: float, tol: float) -> bool:
    return low * (1 - tol) <= value <= high * (1 + tol)


def group_by(rows: pd.DataFrame, by: Sequence[str]) -> list[tuple[tuple[Any, ...], pd.DataFrame]]:
    """(key tuple, rows) per group, in order of appearance; [] for an empty frame."""
    if rows.empty:
        return []
    return [
        (k if isinstance(k, tuple) else (k,), g) for k, g in rows.groupby(list(by), sort=False, dropna=False)
    ]


def median_of(rows: pd.DataFrame, col: str) -> float:
    return float(num(rows[col]).median())


def span(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    low, high = min(values), max(values)
    return fmt(low) if math.isclose(low, high, rel_tol=1e-9) else f"{fmt(low)} to {fmt(high)}"


def _lower_better(a: float, b: float, noise: float) -> int:
    """-1 when a is lower than b by more than `noise` (relative to b), 1 when higher, 0 within."""
    rel = (a - b) / abs(b) if b else math.inf
    return -1 if rel < -noise else (1 if rel > noise else 0)


def is_nan_run(row: pd.Series) -> bool:
    """The row went NaN: its status says so, or it recorded a first non-finite step."""
    return row["status"] == "nan" or fval(row, "first_nonfinite_step") is not None


# ---------------------------------------------------------------------------------------------
# The memory table, the 4x claim, the formula
# ---------------------------------------------------------------------------------------------
# What the lesson says (hypotheses, never measured values): weights and "Total with Training"
# per precision for a 7B model, in GB (10**9 bytes).
LESSON_7B_WEIGHTS_GB: dict[str, float] = {"FP32": 28.0, "FP16": 14.0, "INT8": 7.0, "INT4": 3.5}
LESSON_7B_TOTAL_GB: dict[str, float] = {"FP32": 100.0, "FP16": 56.0, "INT8": 28.0, "INT4": 10.0}
# Which rows of the matrix hold each precision's weights; None: the matrix runs none.
PRECISION_ROWS: dict[str, str | None] = {"FP32": None, "FP16": "none", "INT8": None, "INT4": "nf4"}
_NOT_IN_MATRIX = {
    "FP32": "the matrix loads no FP32 weights (fp32 appears only as a 4-bit compute dtype)",
    "INT8": "the matrix loads no 8-bit weights (no load_in_8bit case)",
}
WEIGHTS_TOL = 0.10
TOTAL_TOL = 0.25


def precision_rows(df: pd.DataFrame, precision: str) -> pd.DataFrame:
    quant = PRECISION_ROWS[precision]
    rows = seven_b_rows(df)
    return sixteen_bit(rows) if quant == "none" else quantized(rows, quant)


def _weights_evaluation(precision: str, rows: pd.DataFrame, condition: str) -> Evaluation:
    """Measured weight bytes of one 7-8B model at one precision, scaled per parameter to 7e9."""
    expected = LESSON_7B_WEIGHTS_GB[precision]
    wbytes = median_of(rows, "weight_bytes")
    params = float(np.median([base_params(r) for _, r in rows.iterrows()]))
    per_param = wbytes / params
    at_7b = per_param * LESSON_7B_PARAMS
    model = rows["model"].iloc[0]
    measured = (
        f"{model}: {fmt_gb(wbytes)} for {params:,.0f} params = {per_param:.3f} bytes/param;"
        f" x 7e9 params = {fmt_gb(at_7b)}"
    )
    why = (
        f"weight_bytes / (total_params - trainable_params) of {model}, scaled to the lesson's"
        " 7e9 parameters (GB = 10**9 bytes)"
    )
    if precision != "FP16" and not SEVEN_B_EXACT[0] <= params <= SEVEN_B_EXACT[1]:
        # 4-bit bytes per parameter depend on the share of parameters that stay 16-bit
        # (embeddings, lm_head), which another vocabulary changes: no verdict for "7B" from it.
        return inconclusive(
            why + f"; {model} is not a 7B model and its 16-bit share (embeddings, lm_head) differs",
            measured,
            ids(rows),
            condition,
        )
    if _within(at_7b / GB, expected, WEIGHTS_TOL):
        return holds(measured, ids(rows), condition, why)
    corrected = (
        f"{precision} weights of a 7B model take ~{at_7b / GB:.1f} GB ({per_param:.3f} bytes/param"
        f" measured on {model})"
    )
    return refuted(measured, corrected, ids(rows), condition, why)


def _weights_by_precision(run: RunData, precisions: Sequence[str]) -> list[Evaluation]:
    df = frame(run)
    out: list[Evaluation] = []
    for precision in precisions:
        if PRECISION_ROWS[precision] is None:
            out.append(not_run(_NOT_IN_MATRIX[precision], condition=precision))
            continue
        rows = select(
            precision_rows(df, precision),
            f"7-8B {precision}",
            ("weight_bytes", "total_params"),
            condition=precision,
            statuses=LOADED,
        )
        if isinstance(rows, Evaluation):
            out.append(rows)
            continue
        by = ["model"] if precision == "FP16" else ["model", "double_quant"]
        for key, group in group_by(rows, by):
            condition = f"{precision} on {key[0]}"
            if precision == "INT4":
                condition += f" (nf4, double quant {'on' if truthy(key[1]) else 'off'})"
            out.append(_weights_evaluation(precision, group, condition))
    return out


def check_weights_7b(run: RunData) -> list[Evaluation]:
    """The 7B table's "Memory for Weights" column, one Evaluation per precision and shape."""
    return _weights_by_precision(run, ("FP32", "FP16", "INT8", "INT4"))


def check_tradeoff_memory_7b(run: RunData) -> list[Evaluation]:
    """The trade-off table's "Memory for 7B model": ~14 GB (16-bit) vs ~3.5 GB (4-bit)."""
    return _weights_by_precision(run, ("FP16", "INT4"))


def check_training_total_7b(run: RunData) -> list[Evaluation]:
    """The 7B table's "Total with Training": peak memory of the 7-8B LoRA/QLoRA rows that ran."""
    df = frame(run)
    out: list[Evaluation] = []
    for precision in ("FP32", "FP16", "INT8", "INT4"):
        if PRECISION_ROWS[precision] is None:
            why = _NOT_IN_MATRIX[precision] + "; no training at this precision was measured"
            out.append(not_run(why, condition=precision))
            continue
        kind = "16-bit LoRA" if precision == "FP16" else "QLoRA (nf4)"
        rows = select(
            on_gpu(precision_rows(df, precision)),
            f"7-8B {kind}",
            ("peak_reserved_gib",),
            condition=precision,
        )
        if isinstance(rows, Evaluation):
            out.append(rows)
            continue
        expected = LESSON_7B_TOTAL_GB[precision]
        points, totals_gb = [], []
        for _, r in rows.iterrows():
            device = device_used_gib(r)
            peak = device if device is not None else fval(r, "peak_reserved_gib")
            assert peak is not None  # select() kept only rows with peak_reserved_gib
            totals_gb.append(peak * GIB / GB)
            device_text = f", device {fmt_gib(device)}" if device is not None else ""
            points.append(f"{setting(r)}: reserved {fmt_gib(fval(r, 'peak_reserved_gib') or 0)}{device_text}")
        measured = "; ".join(points)
        models = ", ".join(dict.fromkeys(rows["model"]))
        condition = f"{precision}: {kind} (not full fine-tuning) on {models}, {where(rows)}"
        why = (
            f"device peak (NVML, context included; allocator reserved where NVML is absent) over"
            f" {len(rows)} setting(s); the lesson names no batch or length, so it holds when"
            f" {expected:g} GB lies within the measured range widened by {pct(TOTAL_TOL)}"
        )
        if min(totals_gb) * (1 - TOTAL_TOL) <= expected <= max(totals_gb) * (1 + TOTAL_TOL):
            out.append(holds(measured, ids(rows), condition, why))
        else:
            corrected = f"{kind} training of this model peaked at {span(totals_gb, lambda x: f'{x:.1f}')} GB"
            out.append(refuted(measured, corrected, ids(rows), condition, why))
    return out


QUANT_RATIO = 4.0
QUANT_RATIO_TOL = 0.10


def check_cut_4x(run: RunData) -> list[Evaluation]:
    """16-bit weight bytes / 4-bit weight bytes of the same model (and of its quantized layers)."""
    # The ratio depends on the embedding share, i.e. on model size: judged on the lesson's sizes.
    df, note = lesson_sized(frame(run))
    four = select(quantized(df, "nf4"), "nf4 3B-13B", ("weight_bytes",), statuses=LOADED)
    if isinstance(four, Evaluation):
        return [with_note(four, note)]
    sixteen = select(sixteen_bit(df), "16-bit 3B-13B", ("weight_bytes",), statuses=LOADED)
    if isinstance(sixteen, Evaluation):
        return [with_note(sixteen, note)]
    out: list[Evaluation] = []
    for (model, dq), group in group_by(four, ["model", "double_quant"]):
        ref = sixteen[sixteen["model"] == model]
        condition = f"{model}, nf4 double quant {'on' if truthy(dq) else 'off'}"
        if ref.empty:
            out.append(inconclusive(f"no 16-bit row of {model} measured weight_bytes", condition=condition))
            continue
        b16, b4 = median_of(ref, "weight_bytes"), median_of(group, "weight_bytes")
        ratio = b16 / b4
        measured = f"16-bit {fmt_gb(b16)} / 4-bit {fmt_gb(b4)} = {ratio:.2f}x (whole model)"
        linear = linear_ratio(group)
        if linear is not None:
            measured += f"; quantized linear layers alone: {linear:.2f}x"
        evidence = ids(ref) + ids(group)
        why = (
            "weight_bytes of the 16-bit and 4-bit rows of the same model; embeddings, lm_head and norms"
            " stay 16-bit. Linear-only ratio: quantized_params x 2 bytes / (quant_data_bytes +"
            " quant_stats_bytes)" + (f"; {note}" if note else "")
        )
        if _within(ratio, QUANT_RATIO, QUANT_RATIO_TOL):
            out.append(holds(measured, evidence, condition, why))
        else:
            corrected = f"4-bit storage cuts the weights of {model} {ratio:.2f}x, not 4x" + (
                f" (the quantized linear layers alone {linear:.2f}x)" if linear is not None else ""
            )
            out.append(refuted(measured, corrected, evidence, condition, why))
    return out


def linear_ratio(rows: pd.DataFrame) -> float | None:
    """16-bit bytes of the quantized layers (2 bytes per parameter) over their 4-bit bytes."""
    cols = ("quantized_params", "quant_data_bytes", "quant_stats_bytes")
    if not all(present(rows[c]).any() for c in cols):
        return None
    qparams, data, stats = (median_of(rows, c) for c in cols)
    return qparams * 2 / (data + stats)


# The formula's examples (the lesson's, not measured): parameters in billions -> GB at 4 bits.
LESSON_FORMULA_SIZES_B: tuple[int, ...] = (3, 7, 8, 13)
FORMULA_TOL = 0.15


def nominal_size(params: float, sizes: Sequence[int] = LESSON_FORMULA_SIZES_B) -> int | None:
    """The lesson example size (in B) nearest to `params`, when within 12% of it."""
    best = min(sizes, key=lambda s: abs(params / 1e9 - s) / s)
    return best if abs(params / 1e9 - best) / best <= 0.12 else None


def weight_breakdown(rows: pd.DataFrame) -> str:
    """Where a 4-bit model's bytes go, from the measured byte columns."""
    cols = ("quant_data_bytes", "quant_stats_bytes", "quantized_params")
    if not all(present(rows[c]).any() for c in cols):
        return ""
    total, data, stats = (median_of(rows, c) for c in ("weight_bytes", *cols[:2]))
    base = float(np.median([base_params(r) for _, r in rows.iterrows()]))
    rest_params = base - median_of(rows, "quantized_params")
    return (
        f"4-bit payload {data / GB:.2f} GB + quant stats {stats / GB:.2f} GB + {rest_params:,.0f}"
        f" non-quantized params {(total - data - stats) / GB:.2f} GB"
    )


def check_formula(run: RunData) -> list[Evaluation]:
    """params x 4 / 8 against the measured 4-bit weight bytes, per lesson example size."""
    df = frame(run)
    rows = select(quantized(df), "4-bit", ("weight_bytes", "total_params"), statuses=LOADED)
    by_size: dict[int, list[tuple[str, pd.DataFrame]]] = {s: [] for s in LESSON_FORMULA_SIZES_B}
    if not isinstance(rows, Evaluation):
        for (model,), group in group_by(rows, ["model"]):
            lesson_cfg = group[group["double_quant"].map(truthy) & (group["quant_type"] == "nf4")]
            group = lesson_cfg if not lesson_cfg.empty else group
            size = nominal_size(float(np.median([base_params(r) for _, r in group.iterrows()])))
            if size is not None:
                by_size[size].append((str(model), group))
    out: list[Evaluation] = []
    for size, models in by_size.items():
        condition = f"{size}B, 4-bit"
        if not models:
            why = f"no 4-bit row of a ~{size}B model measured weight_bytes in this run"
            if isinstance(rows, Evaluation):
                why += f" ({rows.why})"
            out.append(not_run(why, condition=condition))
            continue
        for model, group in models:
            params = float(np.median([base_params(r) for _, r in group.iterrows()]))
            formula = params * 4 / 8
            wbytes = median_of(group, "weight_bytes")
            ratio = wbytes / formula
            measured = (
                f"{model} ({params:,.0f} params): formula {fmt_gb(formula)}, measured {fmt_gb(wbytes)}"
                f" = {ratio:.2f}x formula ({quant_label(group.iloc[0])})"
            )
            breakdown = weight_breakdown(group)
            why = "formula with the model's real parameter count vs weight_bytes" + (
                f"; {breakdown}" if breakdown else ""
            )
            cond = f"{condition}: {model}"
            if _within(ratio, 1.0, FORMULA_TOL):
                out.append(holds(measured, ids(group), cond, why))
            else:
                corrected = f"{model} in 4-bit takes {wbytes / GB:.2f} GB, {ratio:.2f}x params x 4 / 8"
                out.append(refuted(measured, corrected, ids(group), cond, why))
    return out


# ---------------------------------------------------------------------------------------------
# NF4 vs FP4
# ---------------------------------------------------------------------------------------------
PPL_NOISE = 0.01  # relative perplexity / error difference treated as noise
SAME_MEMORY_TOL = 0.01


def _nf4_fp4_pairs(rows: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    return pairs(quantized(rows, "nf4"), quantized(rows, "fp4"), vary=("quant_type",))


def check_nf4_quality(run: RunData) -> list[Evaluation]:
    """NF4 vs FP4: held-out perplexity (before and after training), reconstruction error, bytes."""
    df = frame(run)
    out: list[Evaluation] = []
    quality = select(family_rows(df, "quality"), "quality", ("ppl_before",))
    if isinstance(quality, Evaluation):
        out.append(dataclasses.replace(quality, condition="perplexity"))
    else:
        found = _nf4_fp4_pairs(quality)
        if not found:
            out.append(not_run("no nf4 and fp4 quality rows at the same point", condition="perplexity"))
        for nf4, fp4 in found:
            dq = "on" if truthy(nf4["double_quant"]) else "off"
            for col, stage in (("ppl_before", "before training"), ("ppl_after", "after training")):
                out.append(_compare_ppl(nf4, fp4, col, f"perplexity {stage}, double quant {dq}"))
    out += _quant_error_evaluations(run)
    out += _same_memory_evaluations(df)
    return out


def _compare_ppl(nf4: pd.Series, fp4: pd.Series, col: str, condition: str) -> Evaluation:
    a, b = fval(nf4, col), fval(fp4, col)
    evidence = (str(nf4["case_id"]), str(fp4["case_id"]))
    if a is None or b is None:
        return inconclusive(f"{col} not measured on both rows", evidence=evidence, condition=condition)
    measured = f"{col}: nf4 {a:.3f}, fp4 {b:.3f} ({(a - b) / b:+.2%})"
    why = f"held-out perplexity on {nf4['model']}; differences within {pct(PPL_NOISE)} count as noise"
    order = _lower_better(a, b, PPL_NOISE)
    if order < 0:
        return holds(measured, evidence, condition, why)
    if order == 0:
        return inconclusive(why + ": the difference is within it", measured, evidence, condition)
    return refuted(
        measured, f"FP4 gave lower perplexity than NF4 ({b:.3f} vs {a:.3f})", evidence, condition, why
    )


QUANT_ERROR_COLS = ("layer", "quant_type", "double_quant", "rel_error", "numel")


def _quant_error_evaluations(run: RunData) -> list[Evaluation]:
    table = measurement(run, "quant_error", QUANT_ERROR_COLS)
    if isinstance(table, Evaluation):
        return [dataclasses.replace(table, condition="reconstruction error")]
    out = []
    table = table.assign(double_quant=table["double_quant"].map(truthy))
    for (dq,), group in group_by(table, ["double_quant"]):
        condition = f"reconstruction error, double quant {'on' if dq else 'off'}"
        stats = {}
        for qt in ("nf4", "fp4"):
            sub = group[group["quant_type"].astype(str).str.lower() == qt]
            if sub.empty:
                continue
            err, weight = num(sub["rel_error"]), num(sub["numel"])
            stats[qt] = (float((err * weight).sum() / weight.sum()), float(err.median()), len(sub))
        if len(stats) < 2:
            out.append(not_run("quant_error lacks nf4 or fp4 layers", condition=condition))
            continue
        (nm, nmed, n), (fm, fmed, _) = stats["nf4"], stats["fp4"]
        measured = (
            f"relative error over {n} layers: nf4 mean {nm:.4f} / median {nmed:.4f};"
            f" fp4 mean {fm:.4f} / median {fmed:.4f} (mean weighted by numel)"
        )
        orders = {_lower_better(nm, fm, PPL_NOISE), _lower_better(nmed, fmed, PPL_NOISE)}
        why = f"measurement table quant_error; differences within {pct(PPL_NOISE)} count as noise"
        if orders == {-1}:
            out.append(holds(measured, ("quant_error",), condition, why))
        elif orders == {1}:
            corrected = "FP4 reconstructs the weights with lower error than NF4"
            out.append(refuted(measured, corrected, ("quant_error",), condition, why))
        else:
            out.append(
                inconclusive(
                    why + ": mean and median disagree or differ by noise",
                    measured,
                    ("quant_error",),
                    condition,
                )
            )
    return out


def _same_memory_evaluations(df: pd.DataFrame) -> list[Evaluation]:
    rows = select(quantized(df), "4-bit", ("weight_bytes",), condition="same memory", statuses=LOADED)
    if isinstance(rows, Evaluation):
        return [rows]
    seen: dict[tuple[Any, ...], tuple[pd.Series, pd.Series]] = {}
    for nf4, fp4 in _nf4_fp4_pairs(rows):
        seen.setdefault((nf4["model"], truthy(nf4["double_quant"])), (nf4, fp4))
    if not seen:
        return [
            not_run("no nf4 and fp4 rows at the same point measured weight_bytes", condition="same memory")
        ]
    out = []
    for (model, dq), (nf4, fp4) in seen.items():
        a, b = fval(nf4, "weight_bytes"), fval(fp4, "weight_bytes")
        assert a is not None and b is not None
        condition = f"same memory: {model}, double quant {'on' if dq else 'off'}"
        measured = f"weight_bytes nf4 {a:,.0f}, fp4 {b:,.0f} ({(a - b) / b:+.3%})"
        evidence = (str(nf4["case_id"]), str(fp4["case_id"]))
        if _within(a, b, SAME_MEMORY_TOL):
            out.append(holds(measured, evidence, condition))
        else:
            out.append(
                refuted(
                    measured, f"NF4 weights take {(a - b) / b:+.1%} the bytes of FP4", evidence, condition
                )
            )
    return out


QUANT_CODES_COLS = ("quant_type", "index", "value")
UNIFORM_CV = 0.05  # coefficient of variation of the gaps below which spacing counts as equal
NEAR_ZERO = 0.5


@dataclass(frozen=True)
class CodeStats:
    """Shape of a 4-bit code book (values normalized by their largest magnitude)."""

    levels: int
    gaps: tuple[float, ...]
    gap_cv: float
    near_zero: int
    """Distinct levels with |x| <= NEAR_ZERO."""

    @property
    def inner_gap(self) -> float:
        mid = len(self.gaps) // 2
        return min(self.gaps[mid - 1 : mid + 1]) if len(self.gaps) > 1 else self.gaps[0]

    @property
    def outer_gap(self) -> float:
        return max(self.gaps[0], self.gaps[-1])


def code_stats(values: Iterable[float]) -> CodeStats:
    """Spacing statistics of the distinct code values (+0 and -0 are one level)."""
    arr = np.asarray(list(values), dtype=float)
    arr = arr / np.abs(arr).max()
    distinct = np.unique(np.round(arr, 9) + 0.0)  # + 0.0 folds -0.0 into 0.0
    gaps = np.diff(distinct)
    cv = float(gaps.std() / gaps.mean())
    return CodeStats(
        len(distinct), tuple(float(g) for g in gaps), cv, int((np.abs(distinct) <= NEAR_ZERO + 1e-9).sum())
    )


def _codes(run: RunData) -> dict[str, CodeStats] | Evaluation:
    table = measurement(run, "quant_codes", QUANT_CODES_COLS)
    if isinstance(table, Evaluation):
        return table
    return {str(qt).lower(): code_stats(num(g["value"]).dropna()) for qt, g in table.groupby("quant_type")}


def _describe_codes(name: str, s: CodeStats) -> str:
    return (
        f"{name}: {s.levels} distinct levels, gaps {min(s.gaps):.4f} to {max(s.gaps):.4f}"
        f" (CV {s.gap_cv:.2f}), {s.near_zero} levels within |x|<={NEAR_ZERO}"
    )


def check_fp4_uniform(run: RunData) -> list[Evaluation]:
    """FP4 "Equal spacing across range": spacing of the 16 codes bitsandbytes really uses."""
    stats = _codes(run)
    if isinstance(stats, Evaluation):
        return [stats]
    if "fp4" not in stats:
        return [not_run("quant_codes has no fp4 rows")]
    s = stats["fp4"]
    measured = _describe_codes("fp4", s)
    why = f"quant_codes (values normalized to max |x| = 1); equal spacing means gap CV < {UNIFORM_CV}"
    if s.gap_cv < UNIFORM_CV:
        return [holds(measured, ("quant_codes",), "fp4", why)]
    corrected = (
        f"bitsandbytes' FP4 levels are not equally spaced: gaps grow from {min(s.gaps):.4f} to"
        f" {max(s.gaps):.4f}, {s.near_zero} of {s.levels} levels lie within |x|<={NEAR_ZERO}"
    )
    return [refuted(measured, corrected, ("quant_codes",), "fp4", why)]


def check_nf4_near_zero(run: RunData) -> list[Evaluation]:
    """NF4 "Concentrated near zero": more levels within |x|<=0.5 than an equally spaced code
    book of as many levels, and finer gaps near zero than at the ends."""
    stats = _codes(run)
    if isinstance(stats, Evaluation):
        return [stats]
    if "nf4" not in stats:
        return [not_run("quant_codes has no nf4 rows")]
    s = stats["nf4"]
    uniform = int((np.abs(np.linspace(-1, 1, s.levels)) <= NEAR_ZERO + 1e-9).sum())
    measured = _describe_codes("nf4", s) + f"; an equally spaced code book would have {uniform}"
    if "fp4" in stats:
        measured += f"; {_describe_codes('fp4', stats['fp4'])}"
    why = (
        "quant_codes: levels within |x|<=0.5 vs an equally spaced code book on [-1, 1];"
        " gap near zero vs at the ends"
    )
    if s.near_zero > uniform and s.inner_gap < s.outer_gap:
        return [holds(measured, ("quant_codes",), "nf4", why)]
    corrected = (
        f"NF4 has {s.near_zero} levels within |x|<={NEAR_ZERO} (an equally spaced code book: {uniform})"
    )
    return [refuted(measured, corrected, ("quant_codes",), "nf4", why)]


# ---------------------------------------------------------------------------------------------
# Double quantization
# ---------------------------------------------------------------------------------------------
LESSON_DQ_OVERHEAD_GB: dict[bool, float] = {False: 0.5, True: 0.06}
DQ_OVERHEAD_TOL = 0.25
LESSON_FACTOR_BITS: dict[bool, int] = {False: 32, True: 4}
QUANT_STATE_COLS = ("double_quant", "absmax_dtype")


# Below this many quantized parameters, per-tensor constants of a QuantState (each weight's
# 16-entry code table, the nested code and offset) weigh on bits/param and do not scale to 7B.
DQ_SCALING_MIN_QPARAMS = 1e9


def _stats_bits(
    rows: pd.DataFrame, run: RunData, dq: bool
) -> tuple[float, str, tuple[str, ...]] | Evaluation:
    """Bits of scaling factors per quantized parameter, and their source: rows of models with at
    least DQ_SCALING_MIN_QPARAMS quantized params, else the quant_state_layout table's
    stats_bits_per_param (one large weight), else inconclusive (only small models measured)."""
    condition = f"double quant {'on' if dq else 'off'}"
    group = rows[rows["double_quant"].map(truthy) == dq] if not rows.empty else rows
    large = group[num(group["quantized_params"]) >= DQ_SCALING_MIN_QPARAMS] if not group.empty else group
    if not large.empty:
        bits = num(large["quant_stats_bytes"]) * 8 / num(large["quantized_params"])
        models = ", ".join(dict.fromkeys(large["model"].astype(str)))
        return float(bits.median()), f"quant_stats_bytes x 8 / quantized_params of {models}", ids(large)
    table = run.measurements.get("quant_state_layout")
    if table is not None and {"double_quant", "stats_bits_per_param"} <= set(table.columns):
        match = table[table["double_quant"].map(truthy) == dq]
        if not match.empty and present(match["stats_bits_per_param"]).any():
            bits = float(num(match["stats_bits_per_param"]).dropna().iloc[0])
            return (
                bits,
                "stats_bits_per_param of measurement table quant_state_layout",
                ("quant_state_layout",),
            )
    if group.empty:
        return not_run(f"no 4-bit row with {condition} measured quant_stats_bytes", condition=condition)
    bits = num(group["quant_stats_bytes"]) * 8 / num(group["quantized_params"])
    why = (
        f"only models below {DQ_SCALING_MIN_QPARAMS:.0e} quantized params measured it, where per-tensor"
        " constants (code tables, offsets) inflate bits/param; no quant_state_layout table to fall back on"
    )
    return inconclusive(
        why, f"{span(list(bits), lambda x: f'{x:.4f}')} bits/quantized param", ids(group), condition
    )


def check_dq_overhead(run: RunData) -> list[Evaluation]:
    """Scaling-factor bits per quantized parameter, scaled to the quantized parameter count of
    the 7-8B shape that ran (7e9 where none did)."""
    df = frame(run)
    rows = select(quantized(df), "4-bit", ("quant_stats_bytes", "quantized_params"), statuses=LOADED)
    if isinstance(rows, Evaluation):
        if run.measurements.get("quant_state_layout") is None:
            return [rows]
        rows = quantized(df).iloc[0:0]
    seven = seven_b_rows(rows)
    if not seven.empty:
        target = median_of(seven, "quantized_params")
        scaling = f"scaled to {seven['model'].iloc[0]}'s {target:,.0f} quantized params (measured)"
    else:
        target = LESSON_7B_PARAMS
        scaling = "scaled to the lesson's 7e9 params (no 7-8B row measured its quantized params)"
    out = []
    for dq in (False, True):
        condition = f"double quant {'on' if dq else 'off'}"
        found = _stats_bits(rows, run, dq)
        if isinstance(found, Evaluation):
            out.append(found)
            continue
        per_param, source, evidence = found
        overhead = per_param * target / 8
        measured = f"{per_param:.4f} bits/quantized param -> {fmt_gb(overhead)} ({scaling})"
        why = f"{source}; GB = 10**9 bytes"
        if _within(overhead / GB, LESSON_DQ_OVERHEAD_GB[dq], DQ_OVERHEAD_TOL):
            out.append(holds(measured, evidence, condition, why))
        else:
            corrected = f"scaling factors take ~{overhead / GB:.2f} GB for a 7-8B model with {condition}"
            out.append(refuted(measured, corrected, evidence, condition, why))
    return out


def _dtype_bits(name: str) -> int | None:
    width = _DTYPE_BYTES.get(str(name).replace("torch.", "").strip())
    return None if width is None else width * 8


def check_dq_factor_dtype(run: RunData) -> list[Evaluation]:
    """Bit width of the stored scaling factors (absmax) without and with double quantization."""
    table = measurement(run, "quant_state_layout", QUANT_STATE_COLS)
    out = []
    for dq in (False, True):
        condition = f"double quant {'on' if dq else 'off'}"
        lesson = "FP32" if not dq else "4-bit"
        if isinstance(table, Evaluation):
            why = (
                f"{table.why}: bits per quantized parameter (claim dq-overhead-bytes) do not identify the"
                " factors' width without the block size"
            )
            out.append(inconclusive(why, condition=condition))
            continue
        rows = table[table["double_quant"].map(truthy) == dq]
        if rows.empty:
            out.append(not_run(f"quant_state_layout has no row with {condition}", condition=condition))
            continue
        row = rows.iloc[0]
        bits = fval(row, "absmax_bits") if "absmax_bits" in rows.columns else None
        if bits is None:
            bits = _dtype_bits(row["absmax_dtype"])
        if bits is None:
            out.append(inconclusive(f"unknown absmax dtype {row['absmax_dtype']!r}", condition=condition))
            continue
        measured = f"absmax {row['absmax_dtype']} ({int(bits)} bits)"
        for col in ("blocksize", "nested_absmax_dtype", "nested_blocksize"):
            if col in rows.columns and present(rows[col]).iloc[0]:
                measured += f", {col} {row[col]}"
        why = f"measurement table quant_state_layout; the lesson says {lesson}"
        if int(bits) == LESSON_FACTOR_BITS[dq]:
            out.append(holds(measured, ("quant_state_layout",), condition, why))
        else:
            corrected = (
                f"with {condition} the scaling factors are stored as {row['absmax_dtype']} ({int(bits)}-bit)"
            )
            out.append(refuted(measured, corrected, ("quant_state_layout",), condition, why))
    return out


MINOR_OVERHEAD = 0.10  # the largest slowdown still called "minor"


def check_dq_compute_overhead(run: RunData) -> list[Evaluation]:
    """tokens/s with double quantization vs without, at the same point."""
    df = frame(run)
    rows = select(quantized(df), "4-bit", ("tokens_per_s",))
    if isinstance(rows, Evaluation):
        return [rows]
    dq_on = rows[rows["double_quant"].map(truthy) == True]  # noqa: E712 - a mask, not a test
    dq_off = rows[rows["double_quant"].map(truthy) == False]  # noqa: E712
    found = pairs(dq_on, dq_off, vary=("double_quant",))
    if not found:
        return [not_run("no ok 4-bit rows with and without double quant at the same point")]
    out = []
    for on, off in found:
        a, b = fval(on, "tokens_per_s"), fval(off, "tokens_per_s")
        assert a is not None and b is not None
        slowdown = 1 - a / b
        noise = speed_noise(on, off)
        measured = f"{a:,.0f} vs {b:,.0f} tokens/s: double quant {slowdown:+.1%} slower (noise {pct(noise)})"
        condition = f"{quant_label(off)}: {setting(on)}, {where(pd.DataFrame([on]))}"
        evidence = (str(on["case_id"]), str(off["case_id"]))
        why = f"median tokens/s; 'minor' = at most {pct(MINOR_OVERHEAD)} slower"
        if slowdown <= MINOR_OVERHEAD:
            out.append(holds(measured, evidence, condition, why))
        elif slowdown <= MINOR_OVERHEAD + noise:
            out.append(
                inconclusive(
                    why + ": the excess is within the step-time noise", measured, evidence, condition
                )
            )
        else:
            out.append(
                refuted(
                    measured,
                    f"double quantization costs {slowdown:.0%} of tokens/s here",
                    evidence,
                    condition,
                    why,
                )
            )
    return out


# ---------------------------------------------------------------------------------------------
# Compute dtype
# ---------------------------------------------------------------------------------------------
SLOW_MARGIN = 0.10  # fp32 must be at least this much slower to be "Slow" next to "Fast"
QUALITY_NOISE = 0.02  # relative final-loss difference treated as noise


def check_dtype_speed(run: RunData) -> list[Evaluation]:
    """float32 "Slow" vs float16/bfloat16 "Fast": tokens/s at the same point."""
    df = frame(run)
    rows = select(quantized(df), "4-bit", ("tokens_per_s",))
    if isinstance(rows, Evaluation):
        return [rows]
    fp32 = rows[rows["compute_dtype"] == "fp32"]
    if fp32.empty:
        return [not_run("no ok fp32-compute row with tokens/s in this run")]
    out = []
    for dtype in ("fp16", "bf16"):
        found = pairs(fp32, rows[rows["compute_dtype"] == dtype], vary=("compute_dtype",))
        if not found:
            out.append(not_run(f"no ok {dtype} row at the fp32 row's point", condition=f"fp32 vs {dtype}"))
            continue
        for slow, fast in found:
            a, b = fval(slow, "tokens_per_s"), fval(fast, "tokens_per_s")
            assert a is not None and b is not None
            ratio = a / b
            noise = speed_noise(slow, fast)
            measured = f"fp32 {a:,.0f} vs {dtype} {b:,.0f} tokens/s (fp32 at {ratio:.2f}x)"
            condition = f"fp32 vs {dtype}: {setting(fast)}, {where(pd.DataFrame([slow, fast]))}"
            evidence = (str(slow["case_id"]), str(fast["case_id"]))
            why = f"'Slow' vs 'Fast' = fp32 at least {pct(SLOW_MARGIN)} below; noise {pct(noise)}"
            if ratio <= 1 - SLOW_MARGIN:
                out.append(holds(measured, evidence, condition, why))
            elif ratio >= 1 - SLOW_MARGIN + noise:
                corrected = f"fp32 compute ran at {ratio:.2f}x the tokens/s of {dtype}: not slower"
                out.append(refuted(measured, corrected, evidence, condition, why))
            else:
                out.append(
                    inconclusive(why + ": slower, but by less than the margin", measured, evidence, condition)
                )
    return out


def _stability_pairs(df: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    """(fp16 row, bf16 row) of the stability family at the same learning rate and point."""
    rows = family_rows(df, "stability")
    rows = rows[rows["status"].isin({"ok", "nan"})]
    return pairs(
        rows[rows["compute_dtype"] == "fp16"], rows[rows["compute_dtype"] == "bf16"], ("compute_dtype",)
    )


def _stability_gate(df: pd.DataFrame) -> list[Evaluation]:
    """not_run / inconclusive when the stability family cannot answer at all; [] when it can."""
    fam = family_rows(df, "stability")
    if fam.empty:
        return [not_run("no stability rows in this run")]
    if not _stability_pairs(df):
        return [
            inconclusive(
                f"no fp16/bf16 stability pair ran to an outcome ({status_summary(fam)})", evidence=ids(fam)
            )
        ]
    return []


def _loss_text(row: pd.Series) -> str:
    if is_nan_run(row):
        step = fval(row, "first_nonfinite_step")
        return "NaN" + (f" at step {int(step)}" if step is not None else "")
    loss = fval(row, "final_loss")
    return f"final loss {loss:.4f}" if loss is not None else "final loss not measured"


def check_bf16_quality(run: RunData) -> list[Evaluation]:
    """bfloat16 "Better" than float16: NaN outcomes and final losses of the stability rows, per lr."""
    df = frame(run)
    gate = _stability_gate(df)
    if gate:
        return gate
    out = []
    for fp16, bf16 in _stability_pairs(df):
        condition = f"lr {float(fp16['lr']):g}, {where(pd.DataFrame([fp16, bf16]))}"
        evidence = (str(fp16["case_id"]), str(bf16["case_id"]))
        measured = f"fp16 {_loss_text(fp16)}; bf16 {_loss_text(bf16)}"
        nan16, nanb = is_nan_run(fp16), is_nan_run(bf16)
        why = f"stability rows on {fp16['model']}; final losses within {pct(QUALITY_NOISE)} count as equal"
        if nan16 or nanb:
            if nan16 and not nanb:
                out.append(holds(measured, evidence, condition, why))
            elif nanb and not nan16:
                out.append(refuted(measured, "bf16 went NaN where fp16 did not", evidence, condition, why))
            else:
                out.append(inconclusive("both dtypes went NaN", measured, evidence, condition))
            continue
        a, b = fval(bf16, "final_loss"), fval(fp16, "final_loss")
        if a is None or b is None:
            out.append(inconclusive("final_loss not measured on both rows", measured, evidence, condition))
            continue
        order = _lower_better(a, b, QUALITY_NOISE)
        if order < 0:
            out.append(holds(measured, evidence, condition, why))
        elif order > 0:
            out.append(
                refuted(
                    measured,
                    f"fp16 reached a lower final loss than bf16 ({b:.4f} vs {a:.4f})",
                    evidence,
                    condition,
                    why,
                )
            )
        else:
            out.append(inconclusive(why + ": no difference beyond it", measured, evidence, condition))
    return out


def check_nan_bf16(run: RunData) -> list[Evaluation]:
    """Advice "Use bfloat16": where fp16 went NaN, did bf16 at the same lr stay finite?"""
    df = frame(run)
    gate = _stability_gate(df)
    if gate:
        return gate
    found = _stability_pairs(df)
    nan_fp16 = [(a, b) for a, b in found if is_nan_run(a)]
    summary = "; ".join(
        f"lr {float(a['lr']):g}: fp16 {_loss_text(a)}, bf16 {_loss_text(b)}" for a, b in found
    )
    evidence = tuple(str(r["case_id"]) for pair in found for r in pair)
    condition = where(pd.DataFrame([r for pair in found for r in pair]))
    if not nan_fp16:
        why = "no fp16 stability row went NaN: the advice is untested by this data"
        return [inconclusive(why, summary, evidence, condition)]
    still = [b for _, b in nan_fp16 if is_nan_run(b)]
    why = "stability rows: fp16 NaN rows and their bf16 twins at the same lr"
    if still:
        lrs = ", ".join(f"{float(b['lr']):g}" for b in still)
        return [refuted(summary, f"bf16 also went NaN at lr {lrs}", evidence, condition, why)]
    return [holds(summary, evidence, condition, why)]


LESSON_NAN_LR = 1e-4


def check_nan_lr(run: RunData) -> list[Evaluation]:
    """Advice "Reduce to 1e-4": per dtype, where a higher lr went NaN, does lr 1e-4 stay finite?"""
    df = frame(run)
    fam = family_rows(df, "stability")
    if fam.empty:
        return [not_run("no stability rows in this run")]
    rows = fam[fam["status"].isin({"ok", "nan"})]
    out = []
    for (dtype,), group in group_by(fam, ["compute_dtype"]):
        condition = f"{dtype}, {where(group)}"
        ran = rows[rows["compute_dtype"] == dtype]
        low = ran[np.isclose(num(ran["lr"]), LESSON_NAN_LR)]
        high = ran[num(ran["lr"]) > LESSON_NAN_LR * (1 + 1e-9)]
        summary = "; ".join(
            f"lr {float(r['lr']):g}: {_loss_text(r)}" for _, r in ran.sort_values("lr").iterrows()
        )
        if low.empty or high.empty:
            why = (
                f"no {dtype} stability rows ran to an outcome at lr 1e-4 and above ({status_summary(group)})"
            )
            out.append(inconclusive(why, summary, ids(group), condition))
            continue
        high_nan = high[high.apply(is_nan_run, axis=1)]
        if high_nan.empty:
            why = f"no {dtype} row above lr 1e-4 went NaN: the advice is untested by this data"
            out.append(inconclusive(why, summary, ids(ran), condition))
            continue
        why = f"{dtype} stability rows: NaN above 1e-4, outcome at 1e-4"
        if low.apply(is_nan_run, axis=1).any():
            out.append(refuted(summary, f"{dtype} also went NaN at lr 1e-4", ids(ran), condition, why))
        else:
            out.append(holds(summary, ids(ran), condition, why))
    return out


# ---------------------------------------------------------------------------------------------
# T4 and bf16
# ---------------------------------------------------------------------------------------------
def check_t4_bf16(run: RunData) -> list[Evaluation]:
    """Claim "T4 does not support bfloat16": native hardware, whether bf16 runs, and its speed."""
    df = frame(run)
    return [_t4_bf16_hardware(df), _t4_bf16_runs(df), _t4_bf16_speed(df)]


def _is_emulated(rows: pd.DataFrame) -> pd.Series:
    return rows["emulated"].map(lambda e: bool(truthy(e)))


def _emulation_blocks(rows: pd.DataFrame, condition: str) -> Evaluation | None:
    """Inconclusive when the bf16 rows ran on a larger GPU standing in for the T4: that GPU has
    bf16 hardware, so neither whether bf16 runs on a T4 nor how fast shows in them."""
    bf16 = rows[rows["compute_dtype"] == "bf16"]
    if bf16.empty or not _is_emulated(bf16).any():
        return None
    hosts = ", ".join(sorted({str(e) for e in bf16["emulated_on"] if e})) or "a larger GPU"
    why = (
        f"emulated on {hosts}, which has bf16 hardware: whether bf16 runs on a T4, and how fast, is not shown"
    )
    measured = f"bf16 rows: {status_summary(bf16)}" if condition == "bf16 runs" else ""
    return inconclusive(why, measured, ids(bf16), condition)


def _t4_bf16_hardware(df: pd.DataFrame) -> Evaluation:
    """bf16_native of rows on a real T4; the registry's capability (a datasheet fact) otherwise."""
    condition = "hardware (native bf16)"
    real = df[~_is_emulated(df)]
    native = real[present(real["bf16_native"])]
    if not native.empty:
        flags = sorted({bool(truthy(v)) for v in native["bf16_native"]})
        measured = f"bf16_native = {flags} on {', '.join(sorted(set(native['gpu_name'].astype(str))))}"
        if flags == [False]:
            return holds(measured, ids(native), condition, "bf16_native measured on a real T4")
        return refuted(measured, "this T4-profile GPU reports native bf16", ids(native), condition)
    t4 = PROFILES["t4"]
    capability = f"{t4.capability[0]}.{t4.capability[1]}"
    why = (
        f"datasheet fact, not measured (qlora_core.gpus registry: T4 compute capability {capability});"
        " no row ran on a real T4"
    )
    measured = f"capability {capability} (datasheet)"
    if t4.native_bf16:
        return refuted(measured, "the registry gives T4 native bf16", (), condition, why)
    return holds(measured, (), condition, why)


def _t4_bf16_runs(df: pd.DataFrame) -> Evaluation:
    """Whether bf16 rows ran on a real T4 (refuting "does not support" in the sense of "cannot")."""
    condition = "bf16 runs"
    bf16 = df[df["compute_dtype"] == "bf16"]
    if bf16.empty:
        return not_run("no bf16 row on profile t4", condition=condition)
    blocked = _emulation_blocks(df, condition)
    if blocked is not None:
        return blocked
    torch_says = sorted({str(truthy(v)) for v in bf16["bf16_torch_supported"] if truthy(v) is not None})
    torch_text = ", ".join(torch_says) or "n/a"
    measured = f"bf16 rows: {status_summary(bf16)}; torch.cuda.is_bf16_supported() = {torch_text}"
    if (bf16["status"] == "ok").any():
        corrected = (
            "T4 has no bf16 hardware (capability 7.5), but bf16 training runs on it (through emulation)"
        )
        return refuted(measured, corrected, ids(bf16), condition, "status of the bf16 rows on a real T4")
    if bf16["status"].isin({"unsupported", "cuda_error", "crashed"}).all():
        return holds(measured, ids(bf16), condition, "every bf16 row failed on a real T4")
    return inconclusive("bf16 rows neither ran ok nor failed as unsupported", measured, ids(bf16), condition)


def _t4_bf16_speed(df: pd.DataFrame) -> Evaluation:
    """bf16 vs fp16 tokens/s at the same point on a real T4."""
    condition = "bf16 speed"
    blocked = _emulation_blocks(df, condition)
    if blocked is not None:
        return blocked
    rows = select(quantized(df), "4-bit t4", ("tokens_per_s",), condition=condition)
    if isinstance(rows, Evaluation):
        return rows
    found = pairs(
        rows[rows["compute_dtype"] == "bf16"], rows[rows["compute_dtype"] == "fp16"], ("compute_dtype",)
    )
    if not found:
        return not_run("no ok bf16 and fp16 rows at the same point", condition=condition)
    ratios = [(fval(b, "tokens_per_s") or 0) / (fval(f, "tokens_per_s") or 1) for b, f in found]
    evidence = tuple(str(r["case_id"]) for pair in found for r in pair)
    measured = (
        f"bf16 at {span(ratios, lambda x: f'{x:.2f}x')} the tokens/s of fp16 over {len(found)} point(s)"
    )
    if max(ratios) <= 1 - SLOW_MARGIN:
        return holds(
            measured, evidence, condition, "bf16 clearly slower than fp16: consistent with no bf16 hardware"
        )
    return inconclusive("bf16 is not clearly slower than fp16 on this T4", measured, evidence, condition)


# ---------------------------------------------------------------------------------------------
# The 3B model on T4, the budget, training overheads
# ---------------------------------------------------------------------------------------------
LESSON_3B_LOAD_GIB: dict[str, float] = {"allocated": 2.84, "reserved": 3.14}
LOAD_TOL = 0.10
LESSON_3B_APPROX_GIB = 3.0
LESSON_3B_LEFT_GIB = 12.0
HEADROOM_TOL = 0.15


def _3b_load_rows(df: pd.DataFrame) -> pd.DataFrame | Evaluation:
    """llama-3.2-3b nf4+dq rows on CUDA that measured the load, in the lesson's compute dtype.

    The lesson's T4 config computes in fp16 (bf16 on Ampere); the compute dtype can change the
    dtype of the non-quantized weights at load, so rows of other dtypes are not its output.
    """
    rows = quantized(model_rows(on_gpu(df), "llama-3.2-3b"), "nf4")
    rows = rows[rows["double_quant"].map(truthy) == True]  # noqa: E712 - a mask
    rows = select(rows, "llama-3.2-3b nf4+dq", ("load_alloc_gib", "load_reserved_gib"), statuses=LOADED)
    if isinstance(rows, Evaluation):
        return rows
    lesson_dtype = next((d for d in ("fp16", "bf16") if (rows["compute_dtype"] == d).any()), None)
    if lesson_dtype is None:
        why = f"no llama-3.2-3b nf4+dq row computes in fp16 or bf16 ({', '.join(set(rows['compute_dtype']))})"
        return not_run(why, evidence=ids(rows))
    return rows[rows["compute_dtype"] == lesson_dtype]


def check_3b_load(run: RunData) -> list[Evaluation]:
    """Output "Allocated: 2.84 GB" / "Reserved: 3.14 GB" after loading the 3B model in 4-bit (GiB)."""
    rows = _3b_load_rows(frame(run))
    if isinstance(rows, Evaluation):
        return [rows]
    out = []
    dtype = rows["compute_dtype"].iloc[0]
    for stat, col in (("allocated", "load_alloc_gib"), ("reserved", "load_reserved_gib")):
        values = list(num(rows[col]))
        value = float(np.median(values))
        measured = f"{stat} {span(values, fmt_gib)} over {len(values)} row(s)"
        condition = f"{stat}, compute {dtype}, {where(rows)}"
        why = f"{col} after load (the lesson prints memory_{stat}() / 1024**3, i.e. GiB)"
        if _within(value, LESSON_3B_LOAD_GIB[stat], LOAD_TOL):
            out.append(holds(measured, ids(rows), condition, why))
        else:
            corrected = f"the 3B model in 4-bit shows {stat} {value:.2f} GiB after load"
            out.append(refuted(measured, corrected, ids(rows), condition, why))
    return out


def check_3b_headroom(run: RunData) -> list[Evaluation]:
    """Claim "~3GB in 4-bit, leaving 12GB": load allocation; T4 memory minus what the load reserved."""
    rows = _3b_load_rows(frame(run))
    if isinstance(rows, Evaluation):
        return [rows]
    total = PROFILES["t4"].total_gib
    alloc, reserved = median_of(rows, "load_alloc_gib"), median_of(rows, "load_reserved_gib")
    left = total - reserved
    cond = f"compute {rows['compute_dtype'].iloc[0]}, {where(rows)}"
    out = []
    measured = f"load allocated {fmt_gib(alloc)}"
    why = "load_alloc_gib (GiB)"
    if _within(alloc, LESSON_3B_APPROX_GIB, HEADROOM_TOL):
        out.append(holds(measured, ids(rows), f"~3GB: {cond}", why))
    else:
        out.append(
            refuted(measured, f"the 3B model takes {alloc:.2f} GiB in 4-bit", ids(rows), f"~3GB: {cond}", why)
        )
    measured = (
        f"{total:.2f} GiB (T4 as the driver reports it) - load reserved {reserved:.2f} GiB = {fmt_gib(left)}"
    )
    why = "profile total_gib (registry) minus load_reserved_gib; the CUDA context is not included"
    if _within(left, LESSON_3B_LEFT_GIB, HEADROOM_TOL):
        out.append(holds(measured, ids(rows), f"leaving 12GB: {cond}", why))
    else:
        corrected = f"after loading the 3B model, {left:.1f} GiB of the T4 are left"
        out.append(refuted(measured, corrected, ids(rows), f"leaving 12GB: {cond}", why))
    return out


LESSON_ADAPTER_GB = (0.1, 0.5)
LESSON_OPTIMIZER_GB = (1.0, 2.0)
LESSON_ACTIVATION_GB = (2.0, 8.0)
RANGE_TOL = 0.10


def check_adapter_overhead(run: RunData) -> list[Evaluation]:
    """Range "LoRA adapters: +0.1-0.5 GB", per model and LoRA config (GiB from the allocator)."""
    df = frame(run)
    sized, note = lesson_sized(quantized(df))
    rows = select(sized, "4-bit 3B-13B", ("trainable_params",), statuses=LOADED)
    if isinstance(rows, Evaluation):
        return [with_note(rows, note)]
    out = []
    for (model, r, modules), group in group_by(rows, ["model", "lora_r", "target_modules"]):
        values = [v for v in (adapter_gib(row) for _, row in group.iterrows()) if v is not None]
        condition = f"{model}, r={int(r)} on {modules_label(modules)}"
        if not values:
            out.append(
                inconclusive(
                    "no adapter memory could be read (allocator or dtype missing)",
                    condition=condition,
                    evidence=ids(group),
                )
            )
            continue
        gib = [v for v, _ in values]
        value = float(np.median(gib))
        measured = f"{span(gib, fmt_gib)} ({values[0][1]})"
        low, high = LESSON_ADAPTER_GB
        why = "; ".join(
            filter(None, [f"lesson range {low}-{high} GB, bounds widened by {pct(RANGE_TOL)}", note])
        )
        if _in_range(value, *LESSON_ADAPTER_GB, RANGE_TOL):
            out.append(holds(measured, ids(group), condition, why))
        else:
            out.append(
                refuted(
                    measured,
                    f"LoRA adapters of {condition} take {fmt_gib(value)}",
                    ids(group),
                    condition,
                    why,
                )
            )
    return out


def check_optimizer_overhead(run: RunData) -> list[Evaluation]:
    """Range "Optimizer states: +1-2 GB": optimizer_state_bytes per model and optimizer."""
    df = frame(run)
    sized, note = lesson_sized(quantized(df))
    rows = select(sized, "4-bit 3B-13B", ("optimizer_state_bytes",), statuses=LOADED)
    if isinstance(rows, Evaluation):
        return [with_note(rows, note)]
    out = []
    low, high = LESSON_OPTIMIZER_GB
    for (model, optimizer), group in group_by(rows, ["model", "optimizer"]):
        values = list(num(group["optimizer_state_bytes"]))
        value = float(np.median(values))
        trainable = fval(group.iloc[0], "trainable_params")
        measured = f"{span(values, fmt_gb)}" + (
            f" for {trainable:,.0f} trainable params" if trainable else ""
        )
        condition = f"{model}, {optimizer}"
        why = "; ".join(
            filter(
                None,
                [f"optimizer_state_bytes (every tensor in optimizer.state); lesson {low}-{high} GB", note],
            )
        )
        if _in_range(value / GB, low, high, RANGE_TOL):
            out.append(holds(measured, ids(group), condition, why))
        else:
            corrected = f"{optimizer} states of {model} take {fmt_gb(value)}"
            out.append(refuted(measured, corrected, ids(group), condition, why))
    return out


def _bs(row: pd.Series) -> str:
    return f"b{int(row['batch_size'])} s{int(row['seq_len'])}"


def check_activation_overhead(run: RunData) -> list[Evaluation]:
    """Range "Activation memory: +2-8 GB": peak - after-LoRA allocation over the sweep's points."""
    df = frame(run)
    rows = select(on_gpu(family_rows(df, "sweep")), "sweep", ("peak_alloc_gib", "lora_alloc_gib"))
    if isinstance(rows, Evaluation):
        return [rows]
    out = []
    for (gc, prep), group in group_by(rows, ["gradient_checkpointing", "prepare_kbit"]):
        values = [(activation_gib(r), r) for _, r in group.iterrows()]
        gib = [v for v, _ in values if v is not None]
        low_row = min(values, key=lambda vr: vr[0])[1]
        high_row = max(values, key=lambda vr: vr[0])[1]
        measured = (
            f"{span(gib, fmt_gib)} over {len(gib)} points (lowest at {_bs(low_row)},"
            f" highest at {_bs(high_row)})"
        )
        condition = (
            f"{', '.join(dict.fromkeys(group['model']))}, checkpointing {'on' if truthy(gc) else 'off'},"
            f" prepare_kbit {'on' if truthy(prep) else 'off'}, {where(group)}"
        )
        why = (
            "peak_alloc_gib - lora_alloc_gib (activations plus adapter gradients and optimizer states);"
            f" holds when every point lies in {LESSON_ACTIVATION_GB[0]}-{LESSON_ACTIVATION_GB[1]} GB"
            f" widened by {pct(RANGE_TOL)}"
        )
        if all(_in_range(v, *LESSON_ACTIVATION_GB, RANGE_TOL) for v in gib):
            out.append(holds(measured, ids(group), condition, why))
        else:
            corrected = f"activation memory measured {span(gib, lambda x: f'{x:.2f}')} GiB over the sweep"
            out.append(refuted(measured, corrected, ids(group), condition, why))
    return out


# The T4 budget table (the lesson's numbers): component -> GB.
LESSON_T4_BUDGET: dict[str, float] = {
    "8B model (4-bit)": 4.0,
    "LoRA adapters": 0.3,
    "Optimizer (8-bit Adam)": 0.6,
    "Activations (batch=4, seq=2048)": 6.0,
    "CUDA overhead": 2.0,
    "Total": 12.9,
    "Available buffer": 2.1,
}
BUDGET_TOL = 0.25
LESSON_T4_VRAM_GB = 15.0  # the lesson's "T4 Budget (15GB VRAM)"
# Components read at the training peak (the others are read before training starts).
BUDGET_TRAINING_STAGE = frozenset(
    {
        "Optimizer (8-bit Adam)",
        "Activations (batch=4, seq=2048)",
        "CUDA overhead",
        "Total",
        "Available buffer",
    }
)


def budget_measurements(row: pd.Series) -> dict[str, tuple[float | None, str, str]]:
    """(measured value, unit, how) per T4 budget component, for one row. Byte counts are in GB
    (the lesson's unit for them), allocator and NVML readings in GiB (T4's "15GB" is 15 GiB).

    Training-stage values are None unless the row ran ok: a peak read at an OOM is truncated.
    """
    trained = row["status"] == "ok"
    wbytes = fval(row, "weight_bytes")
    states = fval(row, "optimizer_state_bytes") if trained else None
    adapters = adapter_gib(row)
    device = device_used_gib(row) if trained else None
    reserved = fval(row, "peak_reserved_gib") if trained else None
    total = PROFILES["t4"].total_gib
    return {
        "8B model (4-bit)": (wbytes / GB if wbytes is not None else None, "GB", "weight_bytes"),
        "LoRA adapters": (
            adapters[0] if adapters else None,
            "GiB",
            adapters[1] if adapters else "lora_alloc_gib - prepare_alloc_gib",
        ),
        "Optimizer (8-bit Adam)": (
            states / GB if states is not None else None,
            "GB",
            "optimizer_state_bytes",
        ),
        "Activations (batch=4, seq=2048)": (
            activation_gib(row) if trained else None,
            "GiB",
            "peak_alloc_gib - lora_alloc_gib (with grads and optimizer states)",
        ),
        "CUDA overhead": (
            device - reserved if device is not None and reserved is not None else None,
            "GiB",
            "NVML device peak - peak_reserved_gib",
        ),
        "Total": (device, "GiB", "NVML device peak (context included)"),
        "Available buffer": (
            total - device if device is not None else None,
            "GiB",
            f"T4 {total:.1f} GiB - device peak",
        ),
    }


def check_t4_budget(run: RunData) -> list[Evaluation]:
    """The T4 budget table for 8B at batch 4, seq 2048: the ladder:0 row, component by component."""
    df = frame(run)
    rows = family_rows(df, "ladder:0")
    if rows.empty:
        return [not_run("no ladder:0 row (8B, b4, s2048, 8-bit Adam, no checkpointing) on t4")]
    row = rows.iloc[-1]
    evidence = (str(row["case_id"]),)
    cond = f"{setting(row)}, {where(rows)}"
    out = []
    status = row["status"]
    if status == "ok":
        device = device_used_gib(row)
        peak = f"device peak {fmt_gib(device)}" if device is not None else "no NVML peak"
        out.append(holds(f"status ok; {peak}", evidence, f"fits: {cond}", "the ladder:0 row trained"))
    elif status == "oom":
        corrected = "8B QLoRA at batch 4, seq 2048 without checkpointing runs out of memory on a T4"
        out.append(refuted("status oom", corrected, evidence, f"fits: {cond}", str(row.get("reason") or "")))
    else:
        out.append(
            inconclusive(f"ladder:0 ended {status}: {row.get('reason') or ''}", "", evidence, f"fits: {cond}")
        )
    for component, (value, unit, how) in budget_measurements(row).items():
        expected = LESSON_T4_BUDGET[component]
        condition = f"{component}: {cond}"
        if value is None:
            truncated = status != "ok" and component in BUDGET_TRAINING_STAGE
            why = f"{how}: not measured" + (f" (status {status}: peaks are truncated)" if truncated else "")
            out.append(inconclusive(why, "", evidence, condition))
            continue
        measured = f"{value:.2f} {unit} ({how})"
        why = (
            f"lesson {expected:g} GB within {pct(BUDGET_TOL)}; allocator values in GiB (T4's 15 GB is 15 GiB)"
        )
        if _within(value, expected, BUDGET_TOL):
            out.append(holds(measured, evidence, condition, why))
        else:
            out.append(
                refuted(measured, f"{component}: {value:.2f} {unit} measured", evidence, condition, why)
            )
    return out


# ---------------------------------------------------------------------------------------------
# Parameters and adapters
# ---------------------------------------------------------------------------------------------
LESSON_TRAINABLE = 3_407_872
LESSON_ALL_PARAMS = 3_213_749_248
LESSON_TRAINABLE_PCT = "0.1061"

# Public config.json values (hidden, kv dim = head_dim x kv heads, intermediate, layers) of the
# Llama-style shapes: published facts, used only to derive which LoRA config a printed count fits.
PUBLIC_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "llama-3.2-1b": (2048, 512, 8192, 16),
    "llama-3.2-3b": (3072, 1024, 8192, 28),
    "llama-3.1-8b": (4096, 1024, 14336, 32),
    "llama-2-7b": (4096, 4096, 11008, 32),
    "llama-2-13b": (5120, 5120, 13824, 40),
    "mistral-7b": (4096, 1024, 14336, 32),
    "qwen2.5-7b": (3584, 512, 18944, 28),
}
_MODULE_SETS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "v_proj"),
    ("q_proj", "k_proj", "v_proj"),
    ("q_proj", "k_proj", "v_proj", "o_proj"),
    LESSON_TARGET_MODULES,
)


def lora_param_count(shape: str, r: int, modules: Sequence[str]) -> int:
    """Parameters LoRA of rank r adds on `modules` of a Llama-style shape: r x (in + out) each."""
    hidden, kv, inter, layers = PUBLIC_SHAPES[shape]
    dims = {
        "q_proj": (hidden, hidden),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (hidden, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    return layers * sum(r * (dims[m][0] + dims[m][1]) for m in modules)


def configs_giving(count: int) -> list[str]:
    """LoRA configs (public shape, r, module set) whose adapter count equals `count`."""
    return [
        f"r={r} on {'+'.join(m.replace('_proj', '') for m in mods)} of {shape}"
        for shape in PUBLIC_SHAPES
        for r in (4, 8, 16, 32, 64)
        for mods in _MODULE_SETS
        if lora_param_count(shape, r, mods) == count
    ]


def check_print_trainable(run: RunData) -> list[Evaluation]:
    """print_trainable_parameters for r=16 on the seven projections of Llama-3.2-3B."""
    df = frame(run)
    rows = model_rows(df, "llama-3.2-3b")
    rows = rows[(num(rows["lora_r"]) == 16) & (rows["target_modules"] == _SEVEN)] if not rows.empty else rows
    rows = select(
        rows, "llama-3.2-3b r=16 seven-projection", ("trainable_params", "total_params"), statuses=LOADED
    )
    if isinstance(rows, Evaluation):
        return [rows]
    trainable = int(num(rows["trainable_params"]).median())
    total = int(num(rows["total_params"]).median())
    evidence = ids(rows)
    hand = lora_param_count("llama-3.2-3b", 16, LESSON_TARGET_MODULES)
    consistency = f"hand count from the public config {hand:,}" + (
        " agrees" if hand == trainable else f" DISAGREES with the measured {trainable:,}"
    )
    matches = configs_giving(LESSON_TRAINABLE)
    out = []
    measured = f"trainable params {trainable:,}"
    why = f"trainable_params of {len(rows)} row(s); {consistency}"
    if trainable == LESSON_TRAINABLE:
        out.append(holds(measured, evidence, "trainable params", why))
    else:
        corrected = f"r=16 on the seven projections of Llama-3.2-3B trains {trainable:,} params"
        if matches:
            corrected += f"; the lesson's {LESSON_TRAINABLE:,} is what {' or '.join(matches)} trains"
        out.append(refuted(measured, corrected, evidence, "trainable params", why))
    base = total - trainable
    measured = f"all params {total:,} (base {base:,} + adapters {trainable:,})"
    why = "total_params as peft counts it (adapters included, 4-bit weights counted as parameters)"
    if total == LESSON_ALL_PARAMS:
        out.append(holds(measured, evidence, "all params", why))
    else:
        lesson_base = LESSON_ALL_PARAMS - LESSON_TRAINABLE
        corrected = (
            f"all params {total:,}; the lesson's {LESSON_ALL_PARAMS:,} minus its trainable count leaves a"
            f" base of {lesson_base:,}, not the measured {base:,}"
        )
        out.append(refuted(measured, corrected, evidence, "all params", why))
    share = f"{100 * trainable / total:.4f}"
    measured = f"trainable% {share}%"
    lesson_own = f"{100 * LESSON_TRAINABLE / LESSON_ALL_PARAMS:.4f}"
    pct_why = f"trainable / all, printed to 4 decimals (the lesson's own two counts give {lesson_own}%)"
    if share == LESSON_TRAINABLE_PCT:
        out.append(holds(measured, evidence, "trainable%", pct_why))
    else:
        out.append(
            refuted(
                measured,
                f"trainable% {share}%",
                evidence,
                "trainable%",
                pct_why,
            )
        )
    return out


LESSON_ADAPTER_DTYPES = frozenset({"float16", "bfloat16"})


def check_adapter_dtype(run: RunData) -> list[Evaluation]:
    """Claim "LoRA adapters are trained in ... (FP16/BF16)": the dtype of the trainable params."""
    df = frame(run)
    rows = select(quantized(df), "4-bit", ("trainable_dtypes",), statuses=LOADED)
    if isinstance(rows, Evaluation):
        return [rows]
    out = []
    for (prep, dtype), group in group_by(rows, ["prepare_kbit", "compute_dtype"]):
        found = sorted(
            {
                d.strip().replace("torch.", "")
                for v in group["trainable_dtypes"]
                for d in str(v).split(",")
                if d.strip()
            }
        )
        condition = f"prepare_kbit {'on' if truthy(prep) else 'off'}, compute {dtype}"
        measured = f"trainable dtypes: {', '.join(found)} ({len(group)} rows)"
        why = "trainable_dtypes of the rows after get_peft_model"
        if set(found) <= LESSON_ADAPTER_DTYPES:
            out.append(holds(measured, ids(group), condition, why))
        else:
            corrected = f"with {condition}, LoRA adapters are trained in {', '.join(found)}"
            out.append(refuted(measured, corrected, ids(group), condition, why))
    return out


LORA_REDUCTION = 0.99
LORA_REDUCTION_TOL = 0.005  # "99%" as printed: 98.5% rounds to it


def check_lora_99(run: RunData) -> list[Evaluation]:
    """Claim "reduces the number of trainable parameters by 99%": 1 - trainable / all, per model."""
    df = frame(run)
    sized, note = lesson_sized(df)
    rows = select(sized, "3B-13B", ("trainable_params", "total_params"), statuses=LOADED)
    if isinstance(rows, Evaluation):
        return [with_note(rows, note)]
    out = []
    for (model, r, modules), group in group_by(rows, ["model", "lora_r", "target_modules"]):
        share = float((num(group["trainable_params"]) / num(group["total_params"])).median())
        reduction = 1 - share
        condition = f"{model}, r={int(r)} on {modules_label(modules)}"
        measured = f"trainable {share:.4%} of all params: {reduction:.2%} fewer than full fine-tuning"
        why = "; ".join(filter(None, ["1 - trainable_params / total_params", note]))
        if reduction >= LORA_REDUCTION - LORA_REDUCTION_TOL:
            out.append(holds(measured, ids(group), condition, why))
        else:
            out.append(
                refuted(
                    measured,
                    f"LoRA on {condition} cuts trainable parameters by {reduction:.1%}",
                    ids(group),
                    condition,
                    why,
                )
            )
    return out


# ---------------------------------------------------------------------------------------------
# QLoRA vs LoRA
# ---------------------------------------------------------------------------------------------
LESSON_SLOWDOWN = (0.10, 0.20)
SLOWDOWN_SLACK = 0.05  # absolute: "10-20%" holds for 5%-25%


def check_qlora_slower(run: RunData) -> list[Evaluation]:
    """QLoRA (nf4) tokens/s vs the 16-bit LoRA reference at the same point."""
    df = frame(run)
    rows = select(df, "any", ("tokens_per_s",))
    if isinstance(rows, Evaluation):
        return [rows]
    found = pairs(quantized(rows, "nf4"), sixteen_bit(rows), vary=QUANT_FIELDS)
    if not found:
        return [not_run("no ok nf4 row has an ok 16-bit reference row at the same point")]
    low, high = LESSON_SLOWDOWN[0] - SLOWDOWN_SLACK, LESSON_SLOWDOWN[1] + SLOWDOWN_SLACK
    out, slowdowns = [], []
    why = (
        f"median tokens/s; the lesson's 10-20% widened to {pct(low)}-{pct(high)}; a point outside"
        " that range by less than its step-time noise is inconclusive"
    )
    for q, ref in found:
        a, b = fval(q, "tokens_per_s"), fval(ref, "tokens_per_s")
        assert a is not None and b is not None
        slowdown = 1 - a / b
        noise = speed_noise(q, ref)
        slowdowns.append(slowdown)
        measured = (
            f"{quant_label(q)} {a:,.0f} vs 16-bit {b:,.0f} tokens/s:"
            f" {slowdown:+.1%} slower (noise {pct(noise)})"
        )
        condition = f"{quant_label(q)}: {setting(q)}, {where(pd.DataFrame([q]))}"
        evidence = (str(q["case_id"]), str(ref["case_id"]))
        if low <= slowdown <= high:
            out.append(holds(measured, evidence, condition, why))
        elif low - noise <= slowdown <= high + noise:
            out.append(
                inconclusive(
                    why + ": outside the range by less than the noise", measured, evidence, condition
                )
            )
        else:
            corrected = f"QLoRA ran {slowdown:+.0%} slower than 16-bit LoRA at {setting(q)}"
            out.append(refuted(measured, corrected, evidence, condition, why))
    evidence = tuple(str(r["case_id"]) for pair in found for r in pair)
    measured = f"{span(slowdowns, lambda x: f'{x:+.1%}')} over {len(found)} point(s)"
    verdicts = {e.verdict for e in out}
    if verdicts == {Verdict.HOLDS}:
        out.append(holds(measured, evidence, "overall", why))
    elif Verdict.REFUTED in verdicts:
        corrected = f"QLoRA ran {span(slowdowns, lambda x: f'{x:+.0%}')} slower than 16-bit LoRA"
        out.append(refuted(measured, corrected, evidence, "overall", why))
    else:
        out.append(
            inconclusive(why + ": some points within noise of the range", measured, evidence, "overall")
        )
    return out


SLIGHT_QUALITY = 0.10  # a perplexity gap above this is not "slightly"


MIN_FINETUNE_TOKENS = 50_000  # tokens trained before a fine-tuned quality gap is judged


def trained_tokens(row: pd.Series) -> int:
    """Tokens the row trained on: tokens per optimizer step x steps run."""
    per_step = fval(row, "tokens_per_step") or 0
    losses = row.get("losses")
    steps = len(losses) if isinstance(losses, (list, tuple, np.ndarray)) else 0
    return int(per_step * steps)


def check_tradeoff_quality(run: RunData) -> list[Evaluation]:
    """Quality "Slightly higher" (LoRA) vs "Slightly lower" (QLoRA): held-out perplexity after training."""
    df = frame(run)
    rows = select(family_rows(df, "quality"), "quality", ("ppl_after",))
    if isinstance(rows, Evaluation):
        return [rows]
    found = pairs(quantized(rows, "nf4"), sixteen_bit(rows), vary=QUANT_FIELDS)
    if not found:
        return [not_run("no ok nf4 quality row has an ok 16-bit reference at the same point")]
    out = []
    for q, ref in found:
        a, b = fval(q, "ppl_after"), fval(ref, "ppl_after")
        assert a is not None and b is not None
        gap = (a - b) / b
        trained = min(trained_tokens(q), trained_tokens(ref))
        measured = (
            f"ppl_after {quant_label(q)} {a:.3f} vs 16-bit {b:.3f} ({gap:+.2%}) after {trained:,} tokens"
        )
        condition = f"{quant_label(q)} vs 16-bit on {q['model']}"
        evidence = (str(q["case_id"]), str(ref["case_id"]))
        why = f"noise {pct(PPL_NOISE)}; 'slightly' = QLoRA worse by at most {pct(SLIGHT_QUALITY)}"
        if trained < MIN_FINETUNE_TOKENS:
            # The claim is about fine-tuned models; after a few thousand tokens the gap is still
            # the quantization gap of the untrained weights (the CPU tier trains 2,560 tokens).
            out.append(
                inconclusive(
                    why + f": fewer than {MIN_FINETUNE_TOKENS:,} tokens trained, too little to judge"
                    " fine-tuned quality",
                    measured,
                    evidence,
                    condition,
                )
            )
        elif abs(gap) <= PPL_NOISE:
            out.append(inconclusive(why + ": the gap is within noise", measured, evidence, condition))
        elif gap <= SLIGHT_QUALITY and gap > 0:
            out.append(holds(measured, evidence, condition, why))
        elif gap < 0:
            out.append(
                refuted(
                    measured,
                    f"QLoRA reached {-gap:.1%} lower perplexity than 16-bit LoRA",
                    evidence,
                    condition,
                    why,
                )
            )
        else:
            out.append(
                refuted(
                    measured, f"QLoRA perplexity is {gap:.0%} higher: not slightly", evidence, condition, why
                )
            )
    return out


def compat_outcomes(
    df: pd.DataFrame,
) -> tuple[dict[str, dict[str, pd.Series]], dict[str, tuple[float, str]]]:
    """kind ("lora", "qlora") -> model -> its compat row; and each model's size."""
    rows = family_rows(df, "compat")
    out: dict[str, dict[str, pd.Series]] = {"lora": {}, "qlora": {}}
    for _, r in rows.iterrows():
        out["lora" if r["quant_type"] == "none" else "qlora"][str(r["model"])] = r
    return out, model_sizes(df)


def outcomes_text(models: dict[str, pd.Series], sizes: dict[str, tuple[float, str]]) -> str:
    """Each model's compat status, smallest first: "llama-3.2-3b ok, llama-3.1-8b oom"."""
    ordered = sorted(models, key=lambda m: sizes.get(m, (math.inf, ""))[0])
    return ", ".join(f"{m} {models[m]['status']}" for m in ordered)


def check_t4_compat(run: RunData) -> list[Evaluation]:
    """T4 compatibility "3B models only" (16-bit LoRA) and "Up to 8B models" (QLoRA): compat rows."""
    df = frame(run)
    outcomes, sizes = compat_outcomes(df)
    out = []
    for kind, limit, text in (("lora", 3.6e9, "3B models only"), ("qlora", 9.0e9, "Up to 8B models")):
        models = outcomes[kind]
        label = "16-bit LoRA" if kind == "lora" else "QLoRA"
        condition = f"{label}: {text}"
        if not models:
            out.append(not_run(f"no {label} compat rows on t4", condition=condition))
            continue
        evidence = tuple(str(r["case_id"]) for r in models.values())
        measured = outcomes_text(models, sizes)
        unknown = [m for m, r in models.items() if r["status"] not in {"ok", "oom"} or m not in sizes]
        if unknown:
            out.append(
                inconclusive(
                    f"{', '.join(unknown)}: no ok/oom outcome or unknown size", measured, evidence, condition
                )
            )
            continue
        within = {m: r for m, r in models.items() if sizes[m][0] < limit}
        beyond = {m: r for m, r in models.items() if sizes[m][0] >= limit}
        failed_within = [m for m, r in within.items() if r["status"] != "ok"]
        fit_beyond = [m for m, r in beyond.items() if r["status"] == "ok"]
        sources = ", ".join(sorted({s for _, s in sizes.values()}))
        why = f"compat rows (smallest training point); model sizes from: {sources}"
        if failed_within:
            out.append(
                refuted(
                    measured,
                    f"{label} runs out of memory on the T4 for {', '.join(failed_within)}",
                    evidence,
                    condition,
                    why,
                )
            )
        elif kind == "lora" and fit_beyond:
            out.append(
                refuted(
                    measured,
                    f"16-bit LoRA also fits {', '.join(fit_beyond)} on the T4",
                    evidence,
                    condition,
                    why,
                )
            )
        elif not within:
            out.append(
                inconclusive(f"no compat model below {limit / 1e9:.1f}B ran", measured, evidence, condition)
            )
        elif kind == "lora" and not beyond:
            out.append(
                inconclusive(
                    "no larger model ran as 16-bit LoRA to show the limit", measured, evidence, condition
                )
            )
        elif kind == "qlora" and max(sizes[m][0] for m in within) < 7.5e9:
            out.append(inconclusive("no 8B-class model ran as QLoRA", measured, evidence, condition))
        else:
            out.append(holds(measured, evidence, condition, why))
    return out


def check_a100_compat(run: RunData) -> list[Evaluation]:
    """A100 compatibility "Up to 70B" (16-bit LoRA) and "All sizes" (QLoRA): compat rows."""
    df = frame(run)
    outcomes, sizes = compat_outcomes(df)
    out = []
    lora = outcomes["lora"]
    big = {m: r for m, r in lora.items() if m in sizes and sizes[m][0] >= 6.0e10}
    condition = "16-bit LoRA: Up to 70B"
    if not big:
        ran = outcomes_text(lora, sizes) or "none"
        out.append(not_run(f"no ~70B model ran as 16-bit LoRA (compat rows: {ran})", condition=condition))
    else:
        measured = outcomes_text(big, sizes)
        evidence = tuple(str(r["case_id"]) for r in big.values())
        if all(r["status"] == "ok" for r in big.values()):
            out.append(holds(measured, evidence, condition, "compat rows"))
        else:
            out.append(
                refuted(
                    measured,
                    "16-bit LoRA of a ~70B model does not fit this A100",
                    evidence,
                    condition,
                    "compat rows",
                )
            )
    qlora = outcomes["qlora"]
    condition = "QLoRA: All sizes"
    if not qlora:
        out.append(not_run("no QLoRA compat rows on this A100 profile", condition=condition))
        return out
    measured = outcomes_text(qlora, sizes)
    evidence = tuple(str(r["case_id"]) for r in qlora.values())
    failed = [m for m, r in qlora.items() if r["status"] == "oom"]
    if failed:
        out.append(
            refuted(
                measured,
                f"QLoRA runs out of memory for {', '.join(failed)}",
                evidence,
                condition,
                "compat rows",
            )
        )
    elif (
        all(r["status"] == "ok" for r in qlora.values())
        and max(sizes.get(m, (0, ""))[0] for m in qlora) >= 6.0e10
    ):
        out.append(holds(measured, evidence, condition, "compat rows up to ~70B ran ok"))
    else:
        largest = max(qlora, key=lambda m: sizes.get(m, (0.0, ""))[0])
        why = f"every size run fits (largest {largest}); 'all sizes' includes ~70B, not run"
        out.append(inconclusive(why, measured, evidence, condition))
    return out


# ---------------------------------------------------------------------------------------------
# OOM ladder, checkpointing, fitting on the T4
# ---------------------------------------------------------------------------------------------
LADDER_STEPS = 5
PEAK_TOL = 0.01  # a step may not raise a peak by more than this (allocator rounding)
_LADDER_FIELDS = ("batch_size", "grad_accum", "seq_len", "gradient_checkpointing", "optimizer", "model")


def _step_change(prev: pd.Series, cur: pd.Series) -> str:
    changes = [f"{f} {prev[f]} -> {cur[f]}" for f in _LADDER_FIELDS if _key(prev, [f]) != _key(cur, [f])]
    return ", ".join(changes) or "no field changed"


def check_oom_ladder(run: RunData) -> list[Evaluation]:
    """Each OOM-resolution step lowers peak memory: ladder:k vs ladder:k-1."""
    df = frame(run)
    steps = {k: family_rows(df, f"ladder:{k}") for k in range(LADDER_STEPS)}
    out = []
    for k in range(1, LADDER_STEPS):
        prev, cur = steps[k - 1], steps[k]
        condition = f"step {k}"
        if prev.empty or cur.empty:
            missing = ", ".join(f"ladder:{j}" for j in (k - 1, k) if steps[j].empty)
            out.append(not_run(f"{missing} not in this run", condition=condition))
            continue
        p, c = prev.iloc[-1], cur.iloc[-1]
        condition = f"step {k}: {_step_change(p, c)}, {where(cur)}"
        evidence = (str(p["case_id"]), str(c["case_id"]))
        values = {
            name: (fval(p, col), fval(c, col))
            for name, col in (("alloc", "peak_alloc_gib"), ("reserved", "peak_reserved_gib"))
        }
        measured = f"ladder:{k - 1} {p['status']}, ladder:{k} {c['status']}; " + ", ".join(
            f"peak {n} {a:.2f} -> {b:.2f} GiB"
            for n, (a, b) in values.items()
            if a is not None and b is not None
        )
        if p["status"] == "oom" and c["status"] == "ok":
            out.append(holds(measured, evidence, condition, "the step turned an OOM into a run"))
        elif p["status"] == "ok" and c["status"] == "oom":
            out.append(
                refuted(measured, f"step {k} ran out of memory after ladder:{k - 1} fit", evidence, condition)
            )
        elif p["status"] == "ok" and c["status"] == "ok":
            pairs_ = [(a, b) for a, b in values.values() if a is not None and b is not None]
            if not pairs_:
                out.append(
                    inconclusive("peak memory not measured on both steps", measured, evidence, condition)
                )
            elif all(b <= a * (1 + PEAK_TOL) for a, b in pairs_):
                out.append(holds(measured, evidence, condition, "peak_alloc_gib and peak_reserved_gib"))
            else:
                out.append(
                    refuted(
                        measured,
                        f"step {k} raised peak memory",
                        evidence,
                        condition,
                        "peak_alloc_gib and peak_reserved_gib",
                    )
                )
        else:
            why = f"ladder:{k - 1} {p['status']} and ladder:{k} {c['status']}: no complete peak to compare"
            out.append(inconclusive(why, measured, evidence, condition))
    return out


GC_MIN_REDUCTION = 0.05


def check_gc_activations(run: RunData) -> list[Evaluation]:
    """Gradient checkpointing reduces activation memory: rows differing only in checkpointing."""
    df = on_gpu(frame(run))
    rows = df[df["status"].isin({"ok", "oom"})] if not df.empty else df
    gc_on = rows[rows["gradient_checkpointing"].map(truthy) == True] if not rows.empty else rows  # noqa: E712
    gc_off = rows[rows["gradient_checkpointing"].map(truthy) == False] if not rows.empty else rows  # noqa: E712
    found = pairs(gc_on, gc_off, vary=("gradient_checkpointing",))
    if not found:
        fam = family_rows(df, "gc")
        if fam.empty:
            return [not_run("no rows with and without checkpointing at the same point")]
        return [
            inconclusive(f"gc rows did not both run to an outcome ({status_summary(fam)})", evidence=ids(fam))
        ]
    out = []
    for on, off in found:
        condition = f"{setting(on).replace(', checkpointing on', '')}, {where(pd.DataFrame([on]))}"
        evidence = (str(on["case_id"]), str(off["case_id"]))
        speed = ""
        if fval(on, "tokens_per_s") and fval(off, "tokens_per_s"):
            speed = (
                f"; tokens/s {fval(on, 'tokens_per_s'):,.0f} with vs {fval(off, 'tokens_per_s'):,.0f} without"
            )
        if on["status"] == "ok" and off["status"] == "oom":
            out.append(holds("without checkpointing: oom; with: ok" + speed, evidence, condition, "status"))
            continue
        if on["status"] != "ok" or off["status"] != "ok":
            out.append(inconclusive(f"with {on['status']}, without {off['status']}", "", evidence, condition))
            continue
        a, b = activation_gib(on), activation_gib(off)
        if a is None or b is None:
            out.append(inconclusive("peak_alloc_gib or lora_alloc_gib missing", "", evidence, condition))
            continue
        if a < 0 or b < 0:
            why = "a training peak below the after-LoRA allocation: inconsistent memory readings"
            out.append(inconclusive(why, f"peak - after LoRA: {a:.2f} and {b:.2f} GiB", evidence, condition))
            continue
        measured = f"activations (peak - after LoRA) {fmt_gib(a)} with vs {fmt_gib(b)} without" + speed
        why = f"peak_alloc_gib - lora_alloc_gib; a reduction of at least {pct(GC_MIN_REDUCTION)}"
        if a <= b * (1 - GC_MIN_REDUCTION):
            out.append(holds(measured, evidence, condition, why))
        else:
            out.append(
                refuted(
                    measured, "checkpointing did not reduce activation memory here", evidence, condition, why
                )
            )
    return out


COMFORT = 0.10  # "comfortably": at least this share of the T4 left at the peak


def check_t4_fits_7b(run: RunData) -> list[Evaluation]:
    """Claim "a 7B model fits comfortably in T4's 15GB": 7-8B QLoRA compat rows on t4."""
    df = frame(run)
    rows = quantized(seven_b_rows(family_rows(df, "compat")))
    if rows.empty:
        return [not_run("no 7-8B QLoRA compat row on t4")]
    total = PROFILES["t4"].total_gib
    out = []
    for _, r in rows.iterrows():
        condition = f"{setting(r)}, {where(pd.DataFrame([r]))}"
        evidence = (str(r["case_id"]),)
        if r["status"] == "oom":
            out.append(
                refuted(
                    "status oom",
                    f"{r['model']} QLoRA does not fit the T4 at {setting(r)}",
                    evidence,
                    condition,
                )
            )
            continue
        if r["status"] != "ok":
            out.append(inconclusive(f"ended {r['status']}: {r.get('reason') or ''}", "", evidence, condition))
            continue
        device = device_used_gib(r)
        used = device if device is not None else fval(r, "peak_reserved_gib")
        if used is None:
            out.append(inconclusive("no peak memory measured", "status ok", evidence, condition))
            continue
        left = total - used
        source = "NVML device peak" if device is not None else "peak_reserved_gib (no NVML)"
        measured = f"status ok; peak {fmt_gib(used)} ({source}) of {total:.1f} GiB: {fmt_gib(left)} left"
        why = f"'comfortably' = at least {pct(COMFORT)} of the T4 left; the lesson's 15GB is T4's 15 GiB"
        if left >= COMFORT * total:
            out.append(holds(measured, evidence, condition, why))
        else:
            out.append(
                refuted(
                    measured, f"{r['model']} fits with only {left:.2f} GiB left", evidence, condition, why
                )
            )
    return out


# ---------------------------------------------------------------------------------------------
# The claims
# ---------------------------------------------------------------------------------------------
_MEM = "The Memory Problem"
_NF4 = "NormalFloat4: The Optimal Format"
_DQ = "Double Quantization"
_CDT = "Compute Data Type"
_VERIFY = "Memory Verification"
_CALC = "Memory Calculation Guide"
_PEFT = "Combining QLoRA with LoRA Config"
_ISSUES = "Common Issues and Solutions"
_TRADE = "QLoRA vs LoRA Trade-offs"

CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="lora-99pct",
        section="QLoRA: Quantized Training (intro)",
        quote="reduces the number of trainable parameters by 99%",
        measures="1 - trainable_params / total_params per model and LoRA config",
        expected="at least 99% fewer trainable parameters (98.5% rounds to it)",
        tolerance=LORA_REDUCTION_TOL,
        check=check_lora_99,
    ),
    Claim(
        id="cut-4x",
        section="QLoRA: Quantized Training (intro)",
        quote="you immediately cut memory by 4x",
        measures=(
            "16-bit weight_bytes / nf4 weight_bytes of the same model (whole model; also the quantized linear"
            " layers alone from quantized_params, quant_data_bytes, quant_stats_bytes)"
        ),
        expected="4x (within 10%)",
        tolerance=QUANT_RATIO_TOL,
        check=check_cut_4x,
    ),
    Claim(
        id="mem7b-weights",
        section=_MEM,
        quote="Memory for Weights",
        measures=(
            "weight_bytes / base params of the 7-8B shape that ran, x 7e9, per precision; GB = 10**9 bytes"
        ),
        expected="FP32 28 GB, FP16 14 GB, INT8 7 GB, INT4 3.5 GB (within 10%)",
        tolerance=WEIGHTS_TOL,
        check=check_weights_7b,
    ),
    Claim(
        id="mem7b-training-total",
        section=_MEM,
        quote="Total with Training",
        measures=(
            "device peak (nvml_peak_gib - nvml_base_gib, else peak_reserved_gib) of the 7-8B rows that "
            "trained, per precision, over their batch/seq; compared in GB (10**9), shown in GiB too"
        ),
        expected="FP32 ~100 GB, FP16 ~56 GB, INT8 ~28 GB, INT4 ~10 GB (within the measured range +-25%)",
        tolerance=TOTAL_TOL,
        check=check_training_total_7b,
        applies_to=ON_GPU,
    ),
    Claim(
        id="t4-fits-7b",
        section=_MEM,
        quote="a 7B model fits comfortably in T4's 15GB VRAM",
        measures=(
            "status and device peak of the 7-8B QLoRA compat rows on t4 vs T4's 15 GiB (registry total_gib)"
        ),
        expected="fits, with at least 10% of the T4 left",
        tolerance=COMFORT,
        check=check_t4_fits_7b,
        applies_to=ON_T4,
    ),
    Claim(
        id="fp4-uniform",
        section=_NF4,
        quote="FP4 (uniform) | Equal spacing across range",
        measures=(
            "spacing of the distinct fp4 code values (measurement quant_codes): coefficient of variation of "
            "the gaps; levels within |x|<=0.5"
        ),
        expected="equal spacing: gap CV < 0.05",
        tolerance=UNIFORM_CV,
        check=check_fp4_uniform,
    ),
    Claim(
        id="nf4-near-zero",
        section=_NF4,
        quote="NF4 (normal-aware) | Concentrated near zero",
        measures=(
            "nf4 code values (quant_codes): levels within |x|<=0.5 vs an equally spaced code book, and the "
            "gap near zero vs at the ends"
        ),
        expected="more levels near zero than equal spacing gives, finer gaps near zero",
        tolerance=None,
        check=check_nf4_near_zero,
    ),
    Claim(
        id="nf4-quality",
        section=_NF4,
        quote="better quality than FP4 with the same memory cost",
        measures=(
            "quality rows ppl_before/ppl_after nf4 vs fp4 (with and without double quant); quant_error table "
            "mean/median rel_error; weight_bytes nf4 vs fp4"
        ),
        expected="NF4 lower perplexity and error (beyond 1% noise), equal bytes (within 1%)",
        tolerance=PPL_NOISE,
        check=check_nf4_quality,
    ),
    Claim(
        id="dq-overhead-bytes",
        section=_DQ,
        quote="~0.5 GB overhead for 7B model",
        measures=(
            "quant_stats_bytes x 8 / quantized_params (bits per quantized param), scaled to the 7-8B shape's "
            "quantized params; GB = 10**9 bytes"
        ),
        expected="~0.5 GB without double quant, ~0.06 GB with (within 25%)",
        tolerance=DQ_OVERHEAD_TOL,
        check=check_dq_overhead,
    ),
    Claim(
        id="dq-factor-dtype",
        section=_DQ,
        quote="Scaling factors: 4-bit (also compact)",
        measures="absmax dtype / bits from measurement quant_state_layout, without and with double quant",
        expected="FP32 factors without double quant, 4-bit with",
        tolerance=None,
        check=check_dq_factor_dtype,
    ),
    Claim(
        id="dq-compute-overhead",
        section=_DQ,
        quote="It adds minor computational overhead",
        measures="tokens_per_s with vs without double quant at the same point",
        expected="at most 10% slower",
        tolerance=MINOR_OVERHEAD,
        check=check_dq_compute_overhead,
        applies_to=ON_GPU,
    ),
    Claim(
        id="dtype-speed",
        section=_CDT,
        quote="float32 | Slow",
        measures="tokens_per_s of the fp32-compute row vs fp16/bf16 rows at the same point",
        expected="fp32 at least 10% slower than fp16 and bf16",
        tolerance=SLOW_MARGIN,
        check=check_dtype_speed,
        applies_to=ON_GPU,
    ),
    Claim(
        id="bf16-quality",
        section=_CDT,
        quote="bfloat16 | Fast | Better",
        measures=(
            "stability rows fp16 vs bf16 per lr: NaN outcome (status nan, first_nonfinite_step), final_loss"
        ),
        expected="bf16 better than fp16 (no NaN where fp16 has one; lower final loss beyond 2%)",
        tolerance=QUALITY_NOISE,
        check=check_bf16_quality,
    ),
    Claim(
        id="t4-no-bf16",
        section=_CDT,
        quote="T4 does not support bfloat16",
        measures=(
            "bf16_native of real-T4 rows (else the registry's capability, a datasheet fact); status and "
            "bf16_torch_supported of bf16 rows; bf16 vs fp16 tokens_per_s"
        ),
        expected="no bf16 on T4 (hardware; whether it runs; speed)",
        tolerance=None,
        check=check_t4_bf16,
        applies_to=ON_T4,
    ),
    Claim(
        id="t4-3b-load",
        section=_VERIFY,
        quote="Allocated: 2.84 GB",
        measures="load_alloc_gib / load_reserved_gib of llama-3.2-3b nf4+dq rows (torch's GB = GiB)",
        expected="allocated 2.84, reserved 3.14 GiB (within 10%)",
        tolerance=LOAD_TOL,
        check=check_3b_load,
        applies_to=ON_GPU,
    ),
    Claim(
        id="t4-3b-headroom",
        section=_VERIFY,
        quote="leaving 12GB for LoRA adapters and training state",
        measures="load_alloc_gib of llama-3.2-3b nf4+dq; T4 total_gib (registry) - load_reserved_gib, in GiB",
        expected="~3 GiB loaded, ~12 GiB left (within 15%)",
        tolerance=HEADROOM_TOL,
        check=check_3b_headroom,
        applies_to=ON_T4,
    ),
    Claim(
        id="formula-examples",
        section=_CALC,
        quote="Parameters (B) × Bits / 8",
        measures=(
            "base params x 4 / 8 (the model's real count) vs weight_bytes of its 4-bit rows, for the lesson's"
            " 3B, 7B, 8B, 13B examples; GB = 10**9 bytes"
        ),
        expected="3B 1.5 GB, 7B 3.5 GB, 8B 4 GB, 13B 6.5 GB: measured within 15% of the formula",
        tolerance=FORMULA_TOL,
        check=check_formula,
    ),
    Claim(
        id="overhead-adapters",
        section=_CALC,
        quote="LoRA adapters: +0.1-0.5 GB",
        measures=(
            "lora_alloc_gib - prepare_alloc_gib on CUDA (else trainable_params x dtype bytes), per "
            "model/config, GiB"
        ),
        expected="0.1-0.5 GB (bounds widened by 10%)",
        tolerance=RANGE_TOL,
        check=check_adapter_overhead,
    ),
    Claim(
        id="overhead-optimizer",
        section=_CALC,
        quote="Optimizer states: +1-2 GB",
        measures=(
            "optimizer_state_bytes (every tensor in optimizer.state after training) per 3B-13B model and"
            " optimizer; GB = 10**9 bytes"
        ),
        expected="1-2 GB (bounds widened by 10%)",
        tolerance=RANGE_TOL,
        check=check_optimizer_overhead,
    ),
    Claim(
        id="overhead-activations",
        section=_CALC,
        quote="Activation memory: +2-8 GB",
        measures="peak_alloc_gib - lora_alloc_gib over the sweep's batch/seq points, GiB",
        expected="every point within 2-8 GB (bounds widened by 10%)",
        tolerance=RANGE_TOL,
        check=check_activation_overhead,
        applies_to=ON_GPU,
    ),
    Claim(
        id="t4-budget-8b",
        section="T4 Budget (15GB VRAM)",
        quote="Activations (batch=4, seq=2048)",
        measures=(
            "the ladder:0 row on t4: status; weight_bytes (GB); adapters, activations (GiB); NVML device peak"
            " - peak_reserved_gib as CUDA overhead; T4 15 GiB - device peak as buffer"
        ),
        expected=(
            "model 4, adapters 0.3, optimizer 0.6, activations 6, CUDA 2, total 12.9, buffer 2.1 GB; fits "
            "(each within 25%)"
        ),
        tolerance=BUDGET_TOL,
        check=check_t4_budget,
        applies_to=ON_T4,
    ),
    Claim(
        id="print-trainable-3b",
        section=_PEFT,
        quote="trainable params: 3,407,872 || all params: 3,213,749,248",
        measures="trainable_params, total_params of llama-3.2-3b rows with r=16 on the seven projections",
        expected="trainable 3,407,872; all 3,213,749,248; trainable% 0.1061 (exact)",
        tolerance=0.0,
        check=check_print_trainable,
    ),
    Claim(
        id="adapter-dtype",
        section=_PEFT,
        quote="LoRA adapters are trained in full precision (FP16/BF16)",
        measures="trainable_dtypes per prepare_kbit and compute dtype",
        expected="float16 or bfloat16",
        tolerance=None,
        check=check_adapter_dtype,
    ),
    Claim(
        id="oom-ladder",
        section=_ISSUES,
        quote="Solutions (in order)",
        measures="peak_alloc_gib / peak_reserved_gib (and status) of ladder:0..4, step to step",
        expected="each step lowers peak memory (a rise within 1% counts as none)",
        tolerance=PEAK_TOL,
        check=check_oom_ladder,
        applies_to=ON_GPU,
    ),
    Claim(
        id="gc-activations",
        section="T4 Budget (15GB VRAM)",
        quote="you can further reduce activation memory",
        measures=(
            "peak_alloc_gib - lora_alloc_gib (and status) of rows differing only in gradient checkpointing"
        ),
        expected="lower with checkpointing (by at least 5%)",
        tolerance=GC_MIN_REDUCTION,
        check=check_gc_activations,
        applies_to=ON_GPU,
    ),
    Claim(
        id="qlora-slower",
        section=_ISSUES,
        quote="10-20% slower than FP16 LoRA",
        measures="tokens_per_s of nf4 rows vs the 16-bit reference at the same model, batch, seq, dtype",
        expected="10-20% slower (5-25% accepted)",
        tolerance=SLOWDOWN_SLACK,
        check=check_qlora_slower,
        applies_to=ON_GPU,
    ),
    Claim(
        id="nan-lr",
        section=_ISSUES,
        quote="Learning rate too high → Reduce to 1e-4",
        measures=(
            "stability rows per dtype: NaN (status nan / first_nonfinite_step) above lr 1e-4, outcome at 1e-4"
        ),
        expected="where a higher lr went NaN, lr 1e-4 stays finite",
        tolerance=None,
        check=check_nan_lr,
    ),
    Claim(
        id="nan-bf16",
        section=_ISSUES,
        quote="Numerical instability → Use bfloat16",
        measures="stability rows per lr: where fp16 went NaN, the bf16 outcome",
        expected="bf16 stays finite where fp16 went NaN",
        tolerance=None,
        check=check_nan_bf16,
    ),
    Claim(
        id="tradeoff-memory-7b",
        section=_TRADE,
        quote="Memory for 7B model | ~14 GB | ~3.5 GB",
        measures="as mem7b-weights, FP16 and INT4: weight_bytes per base param x 7e9; GB = 10**9 bytes",
        expected="16-bit ~14 GB, 4-bit ~3.5 GB (within 10%)",
        tolerance=WEIGHTS_TOL,
        check=check_tradeoff_memory_7b,
    ),
    Claim(
        id="tradeoff-quality",
        section=_TRADE,
        quote="Slightly higher | Slightly lower",
        measures="ppl_after of nf4 quality rows vs the 16-bit reference",
        expected="QLoRA worse by more than 1% noise and at most 10%",
        tolerance=SLIGHT_QUALITY,
        check=check_tradeoff_quality,
    ),
    Claim(
        id="t4-compat",
        section=_TRADE,
        quote="3B models only | Up to 8B models",
        measures="status (ok/oom) of compat rows on t4 per model, 16-bit LoRA and QLoRA",
        expected="16-bit LoRA: 3B fits, larger do not; QLoRA: every model up to 8B fits",
        tolerance=None,
        check=check_t4_compat,
        applies_to=ON_T4,
    ),
    Claim(
        id="a100-compat",
        section=_TRADE,
        quote="Up to 70B | All sizes",
        measures="status of compat rows on an A100 profile per model",
        expected="16-bit LoRA up to 70B fits; QLoRA fits all sizes",
        tolerance=None,
        check=check_a100_compat,
        applies_to=ON_A100,
    ),
)


def _run_profiles(run: RunData) -> list[str]:
    return sorted({str(p) for p in run.results["profile"].dropna()}) if "profile" in run.results else []


def evaluate(claim: Claim, run: RunData) -> list[Evaluation]:
    """The claim's evaluations on the rows of the profiles it applies to.

    A claim that applies to no profile of the run, or a run without results, is not_run.
    """
    if run.results.empty:
        return [not_run("no results in this run")]
    if claim.applies_to is not None:
        names = _run_profiles(run)
        keep = [n for n in names if n in PROFILES and claim.applies_to(PROFILES[n])]
        if not keep:
            return [
                not_run(f"applies to {claim.applies_to.description}; this run's profile: {', '.join(names)}")
            ]
        run = dataclasses.replace(run, results=run.results[run.results["profile"].isin(keep)])
    evaluations = claim.check(run)
    return evaluations or [inconclusive("the check produced no evaluation")]


def evaluate_all(run: RunData) -> list[tuple[Claim, Evaluation]]:
    """Every claim's evaluations. A check that raises is reported inconclusive with the error,
    so one broken check cannot hide the others (its bench test still fails on the exception)."""
    out: list[tuple[Claim, Evaluation]] = []
    for claim in CLAIMS:
        try:
            evaluations = evaluate(claim, run)
        except Exception as exc:  # report every other claim even if one check is broken
            evaluations = [inconclusive(f"the check raised {type(exc).__name__}: {exc}")]
        out += [(claim, e) for e in evaluations]
    return out


def _describe(e: Evaluation) -> str:
    parts = [f"[{e.condition}]"] if e.condition else []
    parts.append(f"measured {e.measured or '-'}")
    if e.corrected:
        parts.append(f"corrected: {e.corrected}")
    if e.evidence:
        parts.append(f"evidence: {', '.join(e.evidence)}")
    return "; ".join(parts)


def claim_outcome(claim: Claim, evaluations: Sequence[Evaluation]) -> tuple[str, str]:
    """How a claim's test ends, and its message: ("fail" | "xfail" | "skip" | "pass", text).

    Any refuted evaluation fails, unless the claim carries a known documentation error (xfail);
    with none refuted, a claim none of whose evaluations holds is skipped with the reasons
    (inconclusive ones prefixed "inconclusive:"); otherwise it passes.
    """
    refuted_ = [e for e in evaluations if e.verdict is Verdict.REFUTED]
    if refuted_ and not claim.known_doc_error:
        return "fail", f"{claim.id} refuted: " + " | ".join(_describe(e) for e in refuted_)
    if refuted_:
        measured = " | ".join(e.measured for e in refuted_)
        return "xfail", f"known documentation error: {claim.known_doc_error}; measured {measured}"
    if not any(e.verdict is Verdict.HOLDS for e in evaluations):
        reasons = [
            ("inconclusive: " if e.verdict is Verdict.INCONCLUSIVE else "")
            + e.why
            + (f" [{e.condition}]" if e.condition else "")
            for e in evaluations
        ]
        return "skip", "; ".join(reasons)
    held = sum(e.verdict is Verdict.HOLDS for e in evaluations)
    return "pass", f"{claim.id}: {held} of {len(evaluations)} evaluation(s) hold"


def _with_known_errors(claims: tuple[Claim, ...]) -> tuple[Claim, ...]:
    from reports.known_errors import KNOWN_DOC_ERRORS

    unknown = set(KNOWN_DOC_ERRORS) - {c.id for c in claims}
    if unknown:
        raise ValueError(f"known_errors names claims that do not exist: {sorted(unknown)}")
    return tuple(dataclasses.replace(c, known_doc_error=KNOWN_DOC_ERRORS.get(c.id, "")) for c in claims)


CLAIMS = _with_known_errors(CLAIMS)


CLAIMS_FRAME_COLUMNS: tuple[str, ...] = (
    "id",
    "section",
    "quote",
    "expected",
    "measured",
    "verdict",
    "corrected",
    "condition",
    "evidence",
    "why",
)


def claims_frame(run: RunData) -> pd.DataFrame:
    """One row per (claim, condition) with the lesson's words, the measurement and the verdict."""
    rows = [
        {
            "id": c.id,
            "section": c.section,
            "quote": c.quote,
            "expected": c.expected,
            "measured": e.measured,
            "verdict": e.verdict.value,
            "corrected": e.corrected,
            "condition": e.condition,
            "evidence": ", ".join(e.evidence),
            "why": e.why,
        }
        for c, e in evaluate_all(run)
    ]
    return pd.DataFrame(rows, columns=list(CLAIMS_FRAME_COLUMNS))
