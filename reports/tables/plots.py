"""plots/*.png of a run: memory vs sequence length, tokens/s, loss curves, perplexity.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot state, no display),
so rendering works headless and in parallel with other code using matplotlib. A plot whose rows
are absent is skipped: no file, not in the returned list.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from qlora_core.cases.families import Family
from qlora_core.cases.gpus import PROFILES
from reports.run.frame import RunData
from reports.run.rows import (
    CPU_SPEED_LABEL,
    family_rows,
    group_by,
    num,
    present,
    quant_label,
    speed_is_measured,
)

DPI = 110
_LINE_STYLES = {"nf4": "-", "fp4": "--", "none": ":"}
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _profile_memory(run: RunData, df: pd.DataFrame) -> tuple[str, float] | None:
    """(profile name, device memory in GiB) when the run targets a GPU profile."""
    names = sorted(set(df["profile"].astype(str))) if not df.empty else []
    for name in names:
        profile = PROFILES.get(name)
        if profile is not None and profile.is_gpu:
            return name, profile.total_gib
    return None


def plot_memory_vs_seq(run: RunData, path: Path) -> Path | None:
    """`memory_vs_seq_figure` written to `path`; None (nothing written) when it has no rows."""
    fig = memory_vs_seq_figure(run)
    return _save(fig, path) if fig is not None else None


def memory_vs_seq_figure(run: RunData) -> Figure | None:
    """Peak memory vs sequence length, one line per (model, weight format, batch), sweep and
    reference rows; OOM points as crosses at the profile's memory line. Off the GPU the memory is
    the process's peak RSS."""
    df = run.results
    both = [family_rows(df, Family.SWEEP), family_rows(df, Family.REFERENCE)]
    rows = pd.concat(both).drop_duplicates("case_hash")
    if rows.empty:
        return None
    on_gpu = present(rows["peak_reserved_gib"]).any()
    column, label = (
        ("peak_reserved_gib", "peak reserved (GiB)")
        if on_gpu
        else ("cpu_peak_rss_gib", "process peak RSS (GiB)")
    )
    ok = rows[(rows["status"] == "ok") & present(rows[column])]
    oom = rows[rows["status"] == "oom"]
    if ok.empty and oom.empty:
        return None
    limit = _profile_memory(run, rows)
    several_models = rows["model"].nunique() > 1
    fig = _figure(8.5, 4.8)
    ax = fig.add_subplot()
    lines = group_by(rows, ["model", "quant_type", "double_quant", "compute_dtype", "batch_size"])
    for i, (_, group) in enumerate(lines):
        first = group.iloc[0]
        name = f"{quant_label(first)} b{int(first['batch_size'])}"
        if several_models:
            name = f"{first['model']} {name}"
        color = _COLORS[i % len(_COLORS)]
        good = group[group.index.isin(ok.index)].sort_values("seq_len")
        if not good.empty:
            ax.plot(good["seq_len"], num(good[column]), marker="o", color=color, label=name)
        failed = group[group.index.isin(oom.index)]
        if not failed.empty and limit is not None:
            # OOM points of different lines share x and y: nudge each line's crosses sideways.
            nudge = 2 ** (0.06 * (i % 5 - 2))
            ax.scatter(
                failed["seq_len"] * nudge,
                [limit[1]] * len(failed),
                marker="x",
                s=80,
                color=color,
                label=f"{name}: oom",
            )
    if limit is not None:
        ax.axhline(limit[1], color="black", linestyle="--", linewidth=1)
        ax.text(
            0.01,
            limit[1],
            f"{limit[0]} memory: {limit[1]:.1f} GiB (x: out of memory)",
            transform=ax.get_yaxis_transform(),
            ha="left",
            va="bottom",
            fontsize=8,
        )
    seqs = sorted({int(s) for s in rows["seq_len"]})
    ax.set_xscale("log", base=2)
    ax.set_xticks(seqs, [str(s) for s in seqs])
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel(label)
    top = max([num(ok[column]).max() if not ok.empty else 0.0] + ([limit[1]] if limit else []))
    ax.set_ylim(0, top * 1.12)
    ax.set_title("Peak memory vs sequence length (sweep and 16-bit reference)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="config", title_fontsize=8)
    return fig


def plot_tokens_per_s(run: RunData, path: Path) -> Path | None:
    """tokens/s of every ok row, one horizontal bar per case id, grouped by model."""
    df = run.results
    rows = df[(df["status"] == "ok") & present(df["tokens_per_s"])] if not df.empty else df
    if rows.empty:
        return None
    rows = rows.assign(_tps=num(rows["tokens_per_s"])).sort_values(["model", "_tps"], ascending=[False, True])
    labels = [quant_label(r) for _, r in rows.iterrows()]
    palette = {name: _COLORS[i % len(_COLORS)] for i, name in enumerate(dict.fromkeys(sorted(labels)))}
    fig = _figure(9.0, 1.6 + 0.26 * len(rows))
    ax = fig.add_subplot()
    ax.barh(range(len(rows)), rows["_tps"], color=[palette[x] for x in labels])
    ax.set_yticks(range(len(rows)), list(rows["case_id"]), fontsize=7)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("tokens/s (median over measured steps)")
    on_cpu = not all(speed_is_measured(r) for _, r in rows.iterrows())
    ax.set_title(f"Throughput by case{f' ({CPU_SPEED_LABEL})' if on_cpu else ''}")
    ax.grid(True, axis="x", alpha=0.3)
    handles = [Patch(color=color, label=name) for name, color in palette.items()]
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    return _save(fig, path)


def _quality_rows(run: RunData) -> pd.DataFrame:
    df = run.results
    rows = family_rows(df, Family.QUALITY)
    return rows[rows["status"].isin({"ok", "nan"})] if not rows.empty else rows


def plot_loss_curves(run: RunData, path: Path) -> Path | None:
    """Per-step training loss of the quality rows: NF4 vs FP4 (with and without dq) vs 16-bit."""
    rows = _quality_rows(run)
    curves = [(r, r["losses"]) for _, r in rows.iterrows() if isinstance(r["losses"], list) and r["losses"]]
    if not curves:
        return None
    fig = _figure(7.5, 4.5)
    ax = fig.add_subplot()
    for i, (row, losses) in enumerate(curves):
        # Curves of similar configs overlap: line style per weight format, markers for double quant.
        values = [v if v is not None and math.isfinite(v) else float("nan") for v in losses]
        ax.plot(
            range(len(values)),
            values,
            label=quant_label(row),
            color=_COLORS[i % len(_COLORS)],
            linestyle=_LINE_STYLES.get(str(row["quant_type"]), "-"),
            marker="o" if row["double_quant"] else None,
            markersize=3,
            markevery=max(1, len(values) // 10),
            linewidth=1.4,
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(f"Training loss on real text (quality rows): {rows['model'].iloc[0]}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_perplexity(run: RunData, path: Path) -> Path | None:
    """Held-out perplexity before and after training, per quality row."""
    rows = _quality_rows(run)
    rows = rows[present(rows["ppl_before"]) | present(rows["ppl_after"])] if not rows.empty else rows
    if rows.empty:
        return None
    labels = [quant_label(r) for _, r in rows.iterrows()]
    fig = _figure(max(5.0, 1.3 * len(rows) + 2), 4.5)
    ax = fig.add_subplot()
    width = 0.38
    for offset, col, name, color in (
        (-width / 2, "ppl_before", "before training", "#9ecae1"),
        (width / 2, "ppl_after", "after training", "#08519c"),
    ):
        values = num(rows[col]).tolist()
        bars = ax.bar([i + offset for i in range(len(rows))], values, width, label=name, color=color)
        ax.bar_label(bars, labels=[f"{v:.2f}" if math.isfinite(v) else "" for v in values], fontsize=7)
    ax.set_xticks(range(len(rows)), labels)
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title(f"Held-out perplexity: {rows['model'].iloc[0]}")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


PLOTS: tuple[tuple[str, Callable[[RunData, Path], Path | None]], ...] = (
    ("peak_memory_vs_seq.png", plot_memory_vs_seq),
    ("tokens_per_s.png", plot_tokens_per_s),
    ("loss_curves.png", plot_loss_curves),
    ("perplexity.png", plot_perplexity),
)


def render_plots(run: RunData, out_dir: Path) -> list[Path]:
    """Write every plot whose rows the run has into `out_dir`; the paths written."""
    written = [plot(run, Path(out_dir) / name) for name, plot in PLOTS]
    return [p for p in written if p is not None]
