"""tables.md: the lesson's tables regenerated with this run's measurements beside its numbers.

Every "lesson" cell is what the lesson prints; every "measured" cell comes from the run's rows
through the same selectors the claims use (`reports.run.rows`), and the lesson's numbers come from the
claim modules that check them (`reports.claims.*`). A measurement the run does not
have reads "not run" (with the rows' statuses when rows ran but did not measure it), never a
number computed from the lesson.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from qlora_core.cases.families import Family, ladder_tag
from reports.claims.calculation import LESSON_FORMULA_SIZES_B, nominal_size
from reports.claims.memory_problem import (
    LESSON_7B_PARAMS,
    LESSON_7B_TOTAL_GB,
    LESSON_7B_WEIGHTS_GB,
    NEEDED_LOAD,
    PRECISIONS,
    TOTAL_READING,
    TRAINED_AS,
    UNQUANTIZED,
    needed_load_rows,
    precision_rows,
)
from reports.claims.nan import nan_table
from reports.claims.speed import device_bound_pairs, speed_ratio
from reports.claims.t4_budget import (
    BUDGET_TRAINING_STAGE,
    LESSON_T4_BUDGET,
    LESSON_T4_VRAM_GB,
    budget_figures,
    needed_miss_text,
)
from reports.claims.tradeoffs import compat_outcomes, outcomes_text
from reports.fit.advisor import fit_section
from reports.markdown import fit_width, md_table
from reports.run.frame import RunData
from reports.run.rows import (
    CPU_SPEED_LABEL,
    LOADED,
    QUANT_FIELDS,
    NoRows,
    base_params,
    family_rows,
    fval,
    group_by,
    median_of,
    model_sizes,
    needed_label,
    on_gpu,
    pairs,
    present,
    quant_label,
    quantized,
    sixteen_bit,
    status_summary,
    trained,
    training_peak_gib,
    usable,
    where,
)
from reports.tables import two_card_70b
from reports.tables.dtype import compute_dtypes
from reports.tables.engines import ENGINE_NAMES, engine_comparison, engine_of
from reports.tables.ladder import oom_ladder
from reports.tables.multigpu import multigpu_table
from reports.units import GB, GIB, fmt_size, span

NOT_RUN = "not run"
TRAINED_AS_TEXT = "LoRA/QLoRA training"
_LIBRARIES = (
    ("torch", "torch_version"),
    ("CUDA", "cuda_version"),
    ("transformers", "transformers_version"),
    ("peft", "peft_version"),
    ("bitsandbytes", "bitsandbytes_version"),
)


def _missing(none: NoRows) -> str:
    """ "not run", with the statuses when rows ran but measured nothing."""
    return NOT_RUN if none.absent else f"{NOT_RUN} ({none.why})"


def header(run: RunData) -> str:
    """Title and the run's context: profile, GPU, emulation, library versions, case outcomes."""
    df = run.results
    profile = run.value("profile") or "unknown"
    emulated_on = run.value("emulated_on")
    gpu = run.value("gpu_present", "gpu_name") or "none (CPU)"
    libs = ", ".join(f"{name} {run.value(key)}" for name, key in _LIBRARIES if run.value(key))
    lines = [
        "# The lesson's tables, measured",
        "",
        f"- profile: {profile}" + (f" (emulated on {emulated_on})" if emulated_on else ""),
        f"- GPU: {gpu}"
        + (f", capability {run.value('gpu_capability')}" if run.value("gpu_capability") else ""),
        f"- emulated on: {emulated_on or 'no (the profile is the GPU present)'}",
        f"- libraries: {libs or 'not recorded'}",
        f"- cases: {len(df)}" + (f" ({status_summary(df)})" if len(df) else ""),
        f"- engines: {engines_line(df)}",
        "",
        '"lesson" cells are what the lesson prints; "measured" cells come from this run\'s rows;'
        ' "not run" means no row of this run measured it. GB = 10**9 bytes, GiB = 2**30 bytes.',
    ]
    return "\n".join(lines)


def run_context(run: RunData) -> str:
    """The run in one line: profile, where it ran (emulated on a GPU, a GPU, the CPU), cases by status."""
    emulated_on, gpu, df = run.value("emulated_on"), run.value("gpu_present", "gpu_name"), run.results
    on = f"emulated on {emulated_on}" if emulated_on else gpu or "CPU, no GPU"
    cases = f"{len(df)} cases" + (f" ({status_summary(df)})" if len(df) else "")
    return f"profile {run.value('profile') or 'unknown'} ({on}), {cases}"


def engines_line(df: pd.DataFrame) -> str:
    """Which engine trained which families' rows: the cells below read those rows, and claims
    pair rows of one engine only (the matrix puts the claims' families on the users' engine)."""
    if df.empty:
        return "no rows"
    engines = df.apply(engine_of, axis=1)
    parts = []
    for engine in dict.fromkeys(engines):
        rows = df[engines == engine]
        families = dict.fromkeys(
            t.split(":")[0] for tags in rows["families"].fillna("").astype(str) for t in tags.split(",") if t
        )
        parts.append(f"{ENGINE_NAMES.get(engine, engine)} ({len(rows)} rows: {', '.join(families)})")
    return "; ".join(parts)


# -- memory by precision -------------------------------------------------------------------------
def _weights_cell(df: pd.DataFrame, precision: str) -> str:
    candidates = precision_rows(df, precision)
    rows = usable(candidates, f"7-8B {precision}", ("weight_bytes", "total_params"), statuses=LOADED)
    if isinstance(rows, NoRows):
        needed = _needed_weights_cell(df, needed_load_rows(candidates))
        return needed or _missing(rows)
    if precision == "INT4":
        lesson_cfg = rows[rows["double_quant"]]
        rows = lesson_cfg if not lesson_cfg.empty else rows
    cells = []
    for (model,), group in group_by(rows, ["model"]):
        wbytes = median_of(group, "weight_bytes")
        params = float(np.median([base_params(r) for _, r in group.iterrows()]))
        at_7b = wbytes / params * LESSON_7B_PARAMS
        cells.append(f"{model}: {fmt_size(wbytes)}; {fmt_size(at_7b)} at 7e9 params")
    return "; ".join(cells)


def _needed_weights_cell(df: pd.DataFrame, needed: pd.DataFrame) -> str:
    """Rows that ran out of memory loading: their uncapped rerun's load, labelled "needed"."""
    sizes = model_sizes(df)
    cells = []
    for (model,), group in group_by(needed, ["model"]):
        wbytes = median_of(group, NEEDED_LOAD) * GIB
        at_7b = wbytes / sizes[str(model)][0] * LESSON_7B_PARAMS
        cells.append(
            f"{model}: oom under the cap; {needed_label(group.iloc[0])}: {fmt_size(wbytes)} allocated"
            f" after load; {fmt_size(at_7b)} at 7e9 params"
        )
    return "; ".join(cells)


def _total_cell(df: pd.DataFrame, precision: str) -> str:
    if precision not in TRAINED_AS:
        return f"{NOT_RUN} (loaded only: no {TRAINED_AS_TEXT} at this precision)"
    rows = usable(on_gpu(trained(precision_rows(df, precision))), "7-8B", ("peak_reserved_gib",))
    if isinstance(rows, NoRows):
        return _missing(rows)
    peaks = []
    for _, r in rows.iterrows():
        peaks.append((training_peak_gib(r) or 0.0) * GIB / GB)
    models = ", ".join(dict.fromkeys(rows["model"]))
    kind = TRAINED_AS[precision]
    return f"{kind}: {span(peaks, lambda x: f'{x:.1f}')} GB over {len(peaks)} setting(s) of {models}"


def _full_state_cell(df: pd.DataFrame, precision: str) -> str:
    """The full fine-tuning reading of the lesson's column, from this run's weights: weights,
    gradients and AdamW's two moments at the precision (4 x the measured weights), activations
    excluded; only where the precision can be trained in full (unquantized weights)."""
    if precision not in UNQUANTIZED:
        return "- (int8/4-bit weights are not trained in full)"
    rows = usable(precision_rows(df, precision), f"7-8B {precision}", ("weight_bytes",), statuses=LOADED)
    if isinstance(rows, NoRows):
        return _missing(rows)
    return "; ".join(
        f"{model}: {fmt_size(4 * median_of(group, 'weight_bytes'))}"
        for (model,), group in group_by(rows, ["model"])
    )


def memory_by_precision(run: RunData) -> str:
    """The 7B memory table with the 7-8B shapes' measured weights and training peaks."""
    df = run.results
    rows = [
        (
            precision,
            f"{LESSON_7B_WEIGHTS_GB[precision]:g} GB",
            _weights_cell(df, precision),
            f"~{LESSON_7B_TOTAL_GB[precision]:g} GB",
            _total_cell(df, precision),
            _full_state_cell(df, precision),
        )
        for precision in PRECISIONS
    ]
    headers = (
        "Precision",
        "Weights: lesson",
        "Weights: measured",
        "Total with training: lesson",
        "Total: measured",
        "Full fine-tuning state: 4 x measured weights",
    )
    note = (
        "Measured weights are weight_bytes after the load of the 7-8B shapes (FP32 and INT8 from the"
        " `weights` family; INT4 = nf4 with double quant), also scaled per parameter to 7e9;"
        " a row that ran out of memory under the cap shows what its uncapped rerun needed, labelled."
        f" How 'Total with Training' is read: {TOTAL_READING}. The measured totals are device peaks"
        " (NVML) of those LoRA/QLoRA rows; the last column is the full fine-tuning reading from this"
        " run's weights (weights + gradients + two AdamW moments, activations excluded)."
    )
    return "## Memory for a 7B model, by precision\n\n" + md_table(headers, rows) + "\n\n" + note


# -- T4 budget ------------------------------------------------------------------------------------
def _budget_row(df: pd.DataFrame) -> tuple[pd.Series | None, str]:
    t4 = df[df["profile"] == "t4"] if not df.empty else df
    rows = family_rows(t4, ladder_tag(0))
    if rows.empty:
        profiles = ", ".join(sorted(set(df["profile"].astype(str)))) if not df.empty else "none"
        return None, f"{NOT_RUN} (no ladder:0 row on profile t4; this run: {profiles})"
    return rows.iloc[-1], ""


def t4_budget(run: RunData) -> str:
    """The T4 budget table (8B, batch 4, seq 2048) against the ladder:0 row on profile t4."""
    df = run.results
    row, missing = _budget_row(df)
    measured = budget_figures(row) if row is not None else {}
    rows, running = [], 0.0
    for component, lesson in LESSON_T4_BUDGET.items():
        if component == "Total":
            lesson_total = f"{lesson:g} GB"
        elif component == "Available buffer":
            lesson_total = f"{LESSON_T4_VRAM_GB:g} GB"
        else:
            running += lesson
            lesson_total = f"{running:g} GB"
        if row is None:
            cell, how = missing, ""
        else:
            value, unit, how, label = measured[component]
            truncated = row["status"] != "ok" and component in BUDGET_TRAINING_STAGE
            cell = f"{value:.2f} {unit}" if value is not None else NOT_RUN
            if label:  # what the OOM needed, from its uncapped rerun
                cell += f" {label}"
            if value is None and truncated:
                cell += f" (status {row['status']})"
        rows.append((component, f"{lesson:g} GB", lesson_total, cell, how))
    fits = missing if row is None else f"status {row['status']}"
    if row is not None and needed_miss_text(row):
        fits += f"; {needed_miss_text(row)}"
    rows.append(("Fits in the T4", "yes", f"{LESSON_T4_VRAM_GB:g} GB", fits, "status of the ladder:0 row"))
    headers = ("Component", "Memory: lesson", "Running total: lesson", "Measured", "How measured")
    case = f"case {row['case_id']}, {where(pd.DataFrame([row]))}" if row is not None else "no case"
    return "## T4 budget (15GB VRAM), 8B at batch 4, seq 2048\n\n" + md_table(headers, rows) + f"\n\n{case}."


# -- QLoRA vs LoRA ----------------------------------------------------------------------------------
def _speed_cells(df: pd.DataFrame) -> tuple[str, str]:
    """16-bit tokens/s and QLoRA's slowdown at the device-bound GPU points (the claim's rows), each
    slowdown with its interval; host-bound points and CPU rows are counted, not shown."""
    rows = df[(df["status"] == "ok") & present(df["tokens_per_s"])] if not df.empty else df
    gpu_rows = on_gpu(rows)
    every = pairs(quantized(gpu_rows, "nf4"), sixteen_bit(gpu_rows), vary=QUANT_FIELDS)
    found, _ = device_bound_pairs(every)
    host_bound = len(every) - len(found)
    left_out = f"; {host_bound} host-bound point(s) left out" if host_bound else ""
    if len(gpu_rows) < len(rows):
        left_out += f"; {len(rows) - len(gpu_rows)} CPU row(s) left out ({CPU_SPEED_LABEL})"
    if not found:
        return NOT_RUN, NOT_RUN + left_out
    ref = [fval(b, "tokens_per_s") or 0.0 for _, b in found]
    ratios = [speed_ratio(a, b) for a, b in found]
    n = len(found)
    if n == 1:
        slowdown, low, high = ratios[0].slowdown
        slower = f"{slowdown:+.1%} slower [{low:+.1%}, {high:+.1%}], {ratios[0].basis}"
    else:
        slower = f"{span([r.slowdown[0] for r in ratios], lambda x: f'{x:+.0%}')} slower over {n} points"
    return (
        f"{span(ref, lambda x: f'{x:,.0f}')} tokens/s ({n} points)",
        f"{slower} (device-bound; intervals: claims.md, qlora-slower){left_out}",
    )


def _quality_cells(df: pd.DataFrame) -> tuple[str, str]:
    rows = family_rows(df, Family.QUALITY)
    rows = rows[(rows["status"] == "ok") & present(rows["ppl_after"])] if not rows.empty else rows
    found = pairs(quantized(rows, "nf4"), sixteen_bit(rows), vary=QUANT_FIELDS)
    found = [(a, b) for a, b in found if a["double_quant"]] or found
    if not found:
        return NOT_RUN, NOT_RUN
    q, ref = found[0]
    return f"ppl {fval(ref, 'ppl_after'):.2f}", f"ppl {fval(q, 'ppl_after'):.2f} ({quant_label(q)})"


def _compat_cells(df: pd.DataFrame, profiles: Sequence[str]) -> tuple[str, str]:
    sub = df[df["profile"].isin(profiles)] if not df.empty else df
    outcomes, sizes = compat_outcomes(sub)
    return tuple(  # type: ignore[return-value]
        outcomes_text(outcomes[kind], sizes) or f"{NOT_RUN} (no compat rows on {'/'.join(profiles)})"
        for kind in ("lora", "qlora")
    )


def tradeoffs(run: RunData) -> str:
    """The QLoRA vs LoRA trade-off table."""
    df = run.results
    speed_lora, speed_qlora = _speed_cells(df)
    quality_lora, quality_qlora = _quality_cells(df)
    t4_lora, t4_qlora = _compat_cells(df, ("t4",))
    a100_lora, a100_qlora = _compat_cells(df, ("a100-40gb", "a100-80gb"))
    rows = [
        ("Memory for 7B model", "~14 GB", _weights_cell(df, "FP16"), "~3.5 GB", _weights_cell(df, "INT4")),
        ("Training speed", "Faster", speed_lora, "~10-20% slower", speed_qlora),
        ("Quality", "Slightly higher", quality_lora, "Slightly lower", quality_qlora),
        ("T4 compatibility", "3B models only", t4_lora, "Up to 8B models", t4_qlora),
        ("A100 compatibility", "Up to 70B", a100_lora, "All sizes", a100_qlora),
    ]
    headers = (
        "Factor",
        "LoRA (16-bit): lesson",
        "LoRA: measured",
        "QLoRA (4-bit): lesson",
        "QLoRA: measured",
    )
    note = (
        "Speed: 16-bit LoRA tokens/s and QLoRA (nf4) slowdown at the same points; quality: held-out"
        " perplexity after training (lower is better); compatibility: compat rows' status per model."
    )
    return "## QLoRA vs LoRA trade-offs\n\n" + md_table(headers, rows) + "\n\n" + note


# -- memory formula -------------------------------------------------------------------------------
def memory_formula(run: RunData) -> str:
    """The formula's examples (params x 4 / 8) beside every 4-bit shape that ran."""
    df = run.results
    rows_4bit = usable(quantized(df), "4-bit", ("weight_bytes", "total_params"), statuses=LOADED)
    shapes: list[tuple[float, str, pd.DataFrame]] = []
    if not isinstance(rows_4bit, NoRows):
        for (model,), group in group_by(rows_4bit, ["model"]):
            lesson_cfg = group[(group["quant_type"] == "nf4") & group["double_quant"]]
            group = lesson_cfg if not lesson_cfg.empty else group
            params = float(np.median([base_params(r) for _, r in group.iterrows()]))
            shapes.append((params, str(model), group))
    shapes.sort()
    rows = []
    matched: set[int] = set()
    for params, model, group in shapes:
        size = nominal_size(params)
        if size is not None:
            matched.add(size)
        formula = params * 4 / 8
        wbytes = median_of(group, "weight_bytes")
        rows.append(
            (
                model,
                f"{params:,.0f}",
                f"{size} x 4 / 8 = {size * 4 / 8:g} GB" if size else "-",
                fmt_size(formula),
                f"{fmt_size(wbytes)} ({quant_label(group.iloc[0])})",
                f"{wbytes / formula:.2f}x",
            )
        )
    for size in LESSON_FORMULA_SIZES_B:
        if size not in matched:
            rows.append(
                (f"{size}B (lesson)", NOT_RUN, f"{size} x 4 / 8 = {size * 4 / 8:g} GB", NOT_RUN, NOT_RUN, "-")
            )
    headers = (
        "Model",
        "Params",
        "Lesson example",
        "Formula, real params",
        "Measured 4-bit weights",
        "Measured / formula",
    )
    note = (
        "Measured = weight_bytes after load: 4-bit payload, quantization statistics and the 16-bit"
        " embeddings, lm_head and norms."
    )
    return "## Memory calculation: Parameters x Bits / 8\n\n" + md_table(headers, rows) + "\n\n" + note


def render_tables(run: RunData) -> str:
    """tables.md for one run; no line over `markdown.MAX_LINE_CHARS` (a wider table becomes a list)."""
    sections: tuple[Callable[[RunData], str], ...] = (
        header,
        memory_by_precision,
        compute_dtypes,
        t4_budget,
        oom_ladder,
        tradeoffs,
        memory_formula,
    )
    sections += (engine_comparison, multigpu_table, two_card_70b.section, nan_table, fit_section)
    return fit_width("\n\n".join(text for text in (section(run) for section in sections) if text)) + "\n"
