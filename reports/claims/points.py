"""The points a verdict was judged at, and memory rows judged by what they needed uncapped.

A claim states the lesson's settings it is judged at (`Claim.judged_at`); each of its verdicts
names the run's points it rests on (`Evaluation.points`: model, batch, sequence length), so a
reader sees why two profiles' verdicts differ when they do.

A row that ran out of memory under an emulated cap carries what the same case needed when rerun
uncapped (`needed_*`, `qlora_core.process.oom_need`). A memory claim judges such a point by that need,
labelled `needed_label` wherever it is shown (`with_needed`), and never drops a point silently:
a point that gave no figure (an OOM no rerun measured, a crash) is named (`left_out_text`) and
keeps a claim about every point from holding. No claim model here: `reports.claims.model`
imports this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from qlora_core.cases.gpus import PROFILES
from qlora_core.cases.tiers import tier_for
from qlora_core.measurement.result import NEEDED_OF
from reports.run.rows import fval, needed_label


def point_label(row: pd.Series) -> str:
    """A row's training point without its model: "b4 s2048", "b1 ga4 s1024 nogc" (checkpointing
    off, as case ids write it)."""
    batch, seq, accum = fval(row, "batch_size"), fval(row, "seq_len"), fval(row, "grad_accum")
    if batch is None or seq is None:
        return "no batch/seq"
    text = f"b{int(batch)}"
    if accum is not None and accum > 1:
        text += f" ga{int(accum)}"
    text += f" s{int(seq)}"
    checkpointing = row.get("gradient_checkpointing")
    off = isinstance(checkpointing, (bool, np.bool_)) and not checkpointing
    return text + (" nogc" if off else "")


def points_text(rows: pd.DataFrame, labels: Mapping[str, str] | None = None, statuses: bool = False) -> str:
    """The points of `rows` per model, in order: "llama-3.2-3b b1 s512, b4 s2048: needed (...)".

    `labels`: case id -> how that row's figures were obtained (`with_needed`'s labels), written
    after its point; `statuses`: a row that did not end ok shows its status ("b4 s2048 (oom)").
    """
    if rows.empty:
        return ""
    labels = labels or {}
    # Models in order of appearance, each one's points by batch then length.
    by_model: dict[str, list[str]] = {str(m): [] for m in dict.fromkeys(rows["model"])}
    for _, row in rows.sort_values(["batch_size", "seq_len"], kind="stable").iterrows():
        text = point_label(row)
        label = labels.get(str(row["case_id"]), "")
        if label:
            text += f": {label}"
        elif statuses and row.get("status") not in (None, "ok"):
            text += f" ({row['status']})"
        points = by_model[str(row["model"])]
        if text not in points:
            points.append(text)
    return "; ".join(f"{model} {', '.join(points)}" for model, points in by_model.items())


def points_of(results: pd.DataFrame, evidence: Iterable[str]) -> str:
    """The points of the evidence: its case ids' rows of `results` (with their statuses), and any
    other evidence (measurement tables) named as such."""
    evidence = list(evidence)
    if not evidence:
        return ""
    known = set(results["case_id"].astype(str)) if "case_id" in results else set()
    cases = [e for e in evidence if e in known]
    tables = [e for e in evidence if e not in known]
    rows = results[results["case_id"].astype(str).isin(cases)] if cases else results.iloc[0:0]
    parts = [points_text(rows, statuses=True)] if cases else []
    if tables:
        parts.append("measurement " + ", ".join(tables))
    return "; ".join(p for p in parts if p)


@dataclass(frozen=True)
class Judged:
    """Rows as a memory claim judges them (`with_needed`)."""

    rows: pd.DataFrame
    """Every input row; an oom row whose uncapped rerun ran ok has that rerun's figures in its
    measured fields (`qlora_core.measurement.result.NEEDED_OF`), status ok and no cap."""
    labels: dict[str, str] = field(default_factory=dict)
    """Case id -> `needed_label` of each row replaced by its uncapped rerun."""

    def point(self, row: pd.Series) -> str:
        """A judged row's point with its label: "b4 s2048, needed (measured uncapped on ...)"."""
        label = self.labels.get(str(row["case_id"]), "")
        return point_label(row) + (f", {label}" if label else "")

    def points(self, kept: pd.DataFrame) -> str:
        """The points of `kept` (labelled where needed uncapped), then every other row of this
        judgement with why it gave no figure: a verdict's `points`."""
        missing = left_out_text(self.left_out(kept))
        return "; ".join(filter(None, [points_text(kept, self.labels), missing and f"no figure: {missing}"]))

    def left_out(self, kept: pd.DataFrame) -> pd.DataFrame:
        """The rows of this judgement not among `kept` (the rows a check could compare)."""
        if self.rows.empty:
            return self.rows
        return self.rows[~self.rows["case_id"].astype(str).isin(set(kept["case_id"].astype(str)))]


def _present(value: object) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and np.isnan(value))


def left_out_text(rows: pd.DataFrame) -> str:
    """Why each of `rows` gave no figure: "llama-3.2-3b b4 s2048 ran out of memory (no uncapped
    rerun measured it)", "... ended crashed", "... measured no peak"; "" for none."""
    named = []
    for _, row in rows.iterrows():
        status = str(row.get("status"))
        if status == "oom":
            rerun = row.get("needed_status")
            how = f"its uncapped rerun ended {rerun}" if _present(rerun) else "no uncapped rerun measured it"
            why = f"ran out of memory ({how})"
        elif status != "ok":
            why = f"ended {status}"
        else:
            why = "measured no figure"
        named.append(f"{row['model']} {point_label(row)} {why}")
    return "; ".join(named)


def with_needed(rows: pd.DataFrame) -> Judged:
    """`rows` with each oom row whose uncapped rerun ran ok judged by that rerun's figures."""
    if rows.empty or "needed_status" not in rows.columns:
        return Judged(rows, {})
    oom = rows["status"].astype(str) == "oom"
    rerun_ok = (oom & rows["needed_status"].eq("ok").fillna(False)).astype(bool)
    out = rows.copy()
    if rerun_ok.any():
        for needed, measured in NEEDED_OF.items():
            out.loc[rerun_ok, measured] = rows.loc[rerun_ok, needed]
        out.loc[rerun_ok, "status"] = "ok"
        out.loc[rerun_ok, "memory_cap_gib"] = np.nan
    return Judged(out, {str(r["case_id"]): needed_label(r) for _, r in rows[rerun_ok].iterrows()})


def _device_bound_text() -> str:
    """Each GPU profile's device-bound point (`matrix.Tier.device_bound`), grouped by point."""
    by_point: dict[str, list[str]] = {}
    for name, profile in PROFILES.items():
        if profile.is_gpu and profile.count == 1:
            batch, seq = tier_for(profile).device_bound
            by_point.setdefault(f"b{batch} s{seq}", []).append(name)
    return "; ".join(f"{point} on {', '.join(names)}" for point, names in by_point.items())


DEVICE_BOUND_POINT = (
    f"the profile's device-bound point ({_device_bound_text()}), where the GPU sets the pace;"
    " host-bound points are not judged, and speed is the GPU's own, so the verdict may differ"
    " between GPUs"
)
"""Where the speed claims are judged: the lesson names no point for them."""
