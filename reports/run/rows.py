"""Selecting and reading rows of a typed results frame (`reports.run.frame`): the helpers the claims,
tables and plots share.

Selectors take and return DataFrames (an empty frame stays empty); readers take one row
(`pd.Series`) and return a float, or None where the row did not measure it. `usable` returns the
rows fit to compare, or a `NoRows` saying why there are none.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from qlora_core.cases.case import FIELD_NAMES, FOUR_BIT_TYPES
from qlora_core.measurement.result import NEEDED_OF
from reports.units import GIB

OK_ONLY: frozenset[str] = frozenset({"ok"})
# Load-stage columns (weights, parameter counts, dtypes, load/prepare/LoRA memory) are measured
# before training starts, so they stay valid when training later ran out of memory or went NaN.
LOADED: frozenset[str] = frozenset({"ok", "oom", "nan"})

# Fields that define "the same point": two rows equal on all of them except the ones a
# comparison varies measured the same workload. Every Case field is an axis of the point.
POINT_FIELDS: tuple[str, ...] = ("profile", *FIELD_NAMES)
QUANT_FIELDS: tuple[str, ...] = ("quant_type", "double_quant", "quant_storage", "prepare_kbit")
SEVEN_B_CLASS = (6.0e9, 9.0e9)  # base parameter counts that stand for the lesson's 7-8B models
SEVENTY_B_CLASS_MIN = 6.0e10  # base parameter counts from which a model stands for "70B" (65B too)


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
    """4-bit rows (optionally of one quant type, "int8" too); 8-bit rows only when asked by name."""
    if df.empty:
        return df
    mask = df["quant_type"].isin(FOUR_BIT_TYPES) if quant_type is None else df["quant_type"] == quant_type
    return df[mask]


def trained(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of cases that train (every case but the load-only ones of the `weights` family)."""
    return df[~df["load_only"].fillna(False).astype(bool)] if not df.empty else df


def stored_in_16bit(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose unquantized weights (embeddings, norms, lm_head) loaded in 16 bits: the model as
    the lesson sizes it. An fp32-compute row loads them in fp32, ~0.8 GB more for a 3B model."""
    return df[df["compute_dtype"] != "fp32"] if not df.empty else df


def sixteen_bit(df: pd.DataFrame) -> pd.DataFrame:
    """16-bit rows: the LoRA reference, and load-only 16-bit weights (quant_type none, not fp32)."""
    return df[(df["quant_type"] == "none") & (df["compute_dtype"] != "fp32")] if not df.empty else df


def fp32_weights(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of unquantized fp32 weights (load-only cases of the `weights` family)."""
    return df[(df["quant_type"] == "none") & (df["compute_dtype"] == "fp32")] if not df.empty else df


def on_gpu(df: pd.DataFrame) -> pd.DataFrame:
    """Rows measured on CUDA (memory columns there are allocator readings, not process RSS)."""
    return df[df["device"] == "cuda"] if not df.empty else df


CPU_SPEED_LABEL = "CPU: not a speed measurement"
"""How a tokens/s figure measured on the CPU is labelled wherever a table shows one. On a CPU shared
with other work, tokens/s follows the machine's load and which of bitsandbytes' CPU paths a dtype
takes (one CPU run: bf16 8,024 vs fp16 531 tokens/s; fp4-fp16 8,561 vs fp4-bf16 1,085), not what
the lesson's speed words are about; the speed claims read GPU rows only."""


CPU_SPEED_NOTE = (
    f"tokens/s measured on the CPU ({CPU_SPEED_LABEL}): on a CPU they follow the machine's load and"
    " bitsandbytes' CPU paths, not the GPU speed the lesson's Speed column is about; the speed claims"
    " read GPU rows only."
)
"""The note under a table that shows such figures."""


def speed_is_measured(row: pd.Series) -> bool:
    """Whether a row's tokens/s is a speed measurement: one measured on a GPU (CUDA)."""
    return str(row.get("device") or "") == "cuda"


def cpu_speed_note(rows: pd.DataFrame) -> str:
    """`CPU_SPEED_NOTE` (with a leading space) when any of `rows` has a CPU tokens/s; "" otherwise."""
    return f" {CPU_SPEED_NOTE}" if any(not speed_is_measured(r) for _, r in rows.iterrows()) else ""


def tokens_per_s_text(row: pd.Series) -> str:
    """A row's tokens/s as a cell ("1,234"), labelled `CPU_SPEED_LABEL` off the GPU; "-" for none."""
    value = fval(row, "tokens_per_s")
    if value is None:
        return "-"
    return f"{value:,.0f}" if speed_is_measured(row) else f"{value:,.0f} ({CPU_SPEED_LABEL})"


def status_summary(rows: pd.DataFrame) -> str:
    """Count of statuses, like "2 oom, 1 crashed"."""
    counts = rows["status"].astype(str).value_counts()
    return ", ".join(f"{n} {s}" for s, n in counts.items())


@dataclass(frozen=True)
class NoRows:
    """Why `usable` found no rows to compare."""

    why: str
    absent: bool
    """True when the run has no such rows at all; False when they ran but failed or did not
    measure the columns asked for."""
    evidence: tuple[str, ...] = ()
    """Case ids of the rows that were there."""


def usable(
    rows: pd.DataFrame, what: str, cols: Sequence[str] = (), *, statuses: frozenset[str] = OK_ONLY
) -> pd.DataFrame | NoRows:
    """`rows` that ran with a status in `statuses` and measured every column in `cols`; when none
    did, a `NoRows` naming `what` was missing and why."""
    if rows.empty:
        return NoRows(f"no {what} rows in this run", absent=True)
    ran = rows[rows["status"].isin(statuses)]
    if ran.empty:
        why = f"{what} rows did not run ok ({status_summary(rows)}): nothing measured to compare"
        return NoRows(why, absent=False, evidence=ids(rows))
    for col in cols:
        ran = ran[present(ran[col])]
    if ran.empty:
        why = f"{what} rows ({status_summary(rows)}) have no {', '.join(cols)} measurement"
        return NoRows(why, absent=False, evidence=ids(rows))
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


def quant_label(row: pd.Series) -> str:
    """The weight format of a row: "nf4+dq", "fp4", "16-bit (fp16)"."""
    if row["quant_type"] == "none":
        bits = 32 if row["compute_dtype"] == "fp32" else 16
        return f"{bits}-bit ({row['compute_dtype']})"
    if row["quant_type"] == "int8":
        return "int8"
    return f"{row['quant_type']}{'+dq' if row['double_quant'] else ''}"


def setting(row: pd.Series) -> str:
    """The training point of a row in words: model, batch, length, dtype, checkpointing, prepare."""
    parts = [str(row["model"]), f"b{int(row['batch_size'])}"]
    if fval(row, "grad_accum") and int(row["grad_accum"]) > 1:
        parts.append(f"ga{int(row['grad_accum'])}")
    parts += [f"s{int(row['seq_len'])}", str(row["compute_dtype"])]
    text = " ".join(parts) + f", checkpointing {'on' if row['gradient_checkpointing'] else 'off'}"
    if row["quant_type"] != "none":
        text += f", prepare_kbit {'on' if row['prepare_kbit'] else 'off'}"
    if row["optimizer"] != "adamw":
        text += f", {row['optimizer']}"
    return text


def where(rows: pd.DataFrame) -> str:
    """Profile and emulation of `rows`: "profile t4, emulated on NVIDIA H200"."""
    if rows.empty:
        return ""
    text = "profile " + ",".join(sorted(set(rows["profile"].astype(str))))
    emulated = sorted({str(e) for e, flag in zip(rows["emulated_on"], rows["emulated"]) if flag and e})
    if emulated:
        text += ", emulated on " + ", ".join(emulated)
    return text


def point_key(row: pd.Series, fields: Sequence[str]) -> tuple[Any, ...]:
    """The values of `fields` in a row, normalized so that equal settings compare equal (a Case
    field added after a row was stored reads as its default: `run_folder.RESULT_MIGRATIONS`)."""
    out = []
    for f in fields:
        value = row.get(f)
        if isinstance(value, float):
            value = None if math.isnan(value) else round(value, 12)
        if isinstance(value, (np.bool_, bool)):
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
        by_key.setdefault(point_key(r, fields), []).append(r)
    return [(a, b) for _, a in left.iterrows() for b in by_key.get(point_key(a, fields), [])]


def group_by(rows: pd.DataFrame, by: Sequence[str]) -> list[tuple[tuple[Any, ...], pd.DataFrame]]:
    """(key tuple, rows) per group, in order of appearance; [] for an empty frame."""
    if rows.empty:
        return []
    return [
        (k if isinstance(k, tuple) else (k,), g) for k, g in rows.groupby(list(by), sort=False, dropna=False)
    ]


def median_of(rows: pd.DataFrame, col: str) -> float:
    """The median of a column as a float (NaN when nothing is measured)."""
    return float(num(rows[col]).median())


def is_nan_run(row: pd.Series) -> bool:
    """The row went NaN: its status says so, or it recorded a first non-finite step."""
    return row["status"] == "nan" or fval(row, "first_nonfinite_step") is not None


def device_used_gib(row: pd.Series, reading: str = "nvml_peak_gib") -> float | None:
    """Device memory this process used at its peak (NVML, CUDA context included): the peak
    sample minus what the device held before the process started, when that was recorded.
    `reading`: another NVML reading of the row to take the same way (`load_nvml_gib`: after the
    load of a load-only case)."""
    peak = fval(row, reading)
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
    widths = [DTYPE_BYTES.get(d.strip().replace("torch.", "")) for d in dtypes]
    if trainable is None or not widths or None in widths:
        return None
    width = max(w for w in widths if w is not None)
    return trainable * width / GIB, f"trainable_params x {width} bytes ({','.join(dtypes)})"


# Bytes per element of the dtype names torch prints (trainable_dtypes, absmax dtypes).
DTYPE_BYTES: dict[str, int] = {
    "float32": 4,
    "float": 4,
    "float16": 2,
    "half": 2,
    "bfloat16": 2,
    "float64": 8,
    "uint8": 1,
    "int8": 1,
}


# -- what an OOM needs (qlora_core.process.oom_need) -----------------------------------------------
def needed_label(row: pd.Series) -> str:
    """How a figure of the row's uncapped rerun is labelled wherever it is shown."""
    return f"needed (measured uncapped on {row.get('needed_on') or 'the host GPU'})"


def needed_view(row: pd.Series) -> pd.Series | None:
    """The row as its uncapped rerun measured it (every `needed_*` figure in its measured field's
    place, the rerun's status as `status`, no cap); None when the row was not rerun. Its figures
    are never the capped run's: show them with `needed_label`."""
    status = row.get("needed_status")
    if status is None or (isinstance(status, float) and math.isnan(status)) or status is pd.NA:
        return None
    view = row.copy()
    for needed, measured in NEEDED_OF.items():
        view[measured] = row.get(needed)
    view["status"] = status
    view["memory_cap_gib"] = None
    return view


@dataclass(frozen=True)
class PeakFigures:
    """A row's training peak, from the capped run when it trained, else from its uncapped rerun."""

    alloc_gib: float | None
    reserved_gib: float | None
    label: str  # "" for the capped run's own figures, else `needed_label`
    device_gib: float | None = None  # `device_used_gib`: NVML peak minus what the device held before


def peak_figures(row: pd.Series) -> PeakFigures | None:
    """The training peak of a row that ran ok, or of an oom row whose uncapped rerun ran ok;
    None otherwise (a peak read at an OOM is truncated)."""
    if row.get("status") == "ok":
        return PeakFigures(
            fval(row, "peak_alloc_gib"), fval(row, "peak_reserved_gib"), "", device_used_gib(row)
        )
    view = needed_view(row) if row.get("status") == "oom" else None
    if view is None or view["status"] != "ok":
        return None
    return PeakFigures(
        fval(view, "peak_alloc_gib"),
        fval(view, "peak_reserved_gib"),
        needed_label(row),
        device_used_gib(view),
    )
