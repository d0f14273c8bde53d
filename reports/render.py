"""Render a run folder's reports: claims.md, tables.md, wall_time.md and plots/*.png, from its
stored results.

`render_run` reads only the folder (`load_run`), so `pytest bench` at session end and
`python -m reports render RUN_DIR` later produce the same files.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from reports.claims import (
    CLAIM_VERDICT_RULE,
    Claim,
    Evaluation,
    Verdict,
    claim_verdict,
    deciding_evaluation,
    evaluate_all,
)
from reports.markdown import MAX_LINE_CHARS, fit_width, md_cell, md_table
from reports.run.completeness import run_incompleteness
from reports.run.frame import MATRIX_NOTES, RunData, check_run_dir, load_run
from reports.run.merge import merge_notes
from reports.tables.lesson import header, render_tables, run_context
from reports.tables.plots import render_plots
from reports.tables.wall_time import WALL_TIME_MD, render_wall_time

CLAIMS_MD = "claims.md"
TABLES_MD = "tables.md"
PLOTS_DIR = "plots"
EVIDENCE_SHOWN = 8  # case ids listed per evaluation; the rest are counted
_VERDICT_ORDER = (Verdict.HOLDS, Verdict.REFUTED, Verdict.INCONCLUSIVE, Verdict.NOT_RUN)


class ClaimSummary(NamedTuple):
    """One claim of the lesson with its evaluations on a run, counted once (`claim_verdict`)."""

    claim: Claim
    evaluations: list[Evaluation]

    @property
    def verdict(self) -> Verdict:
        return claim_verdict(self.evaluations)

    @property
    def deciding(self) -> Evaluation | None:
        return deciding_evaluation(self.evaluations)


def summarize_claims(results: Sequence[tuple[Claim, Evaluation]]) -> list[ClaimSummary]:
    """The evaluations of `evaluate_all` grouped per claim, in the lesson's order."""
    by_id: dict[str, ClaimSummary] = {}
    for claim, evaluation in results:
        by_id.setdefault(claim.id, ClaimSummary(claim, [])).evaluations.append(evaluation)
    return list(by_id.values())


def claim_tally(summaries: Sequence[ClaimSummary]) -> dict[Verdict, int]:
    """Claims per verdict (each claim once), every verdict present (0 where none)."""
    counts = Counter(s.verdict for s in summaries)
    return {v: counts.get(v, 0) for v in _VERDICT_ORDER}


def tally_text(tally: dict[Verdict, int], separator: str = " · ") -> str:
    """E.g. "6 hold · 12 refuted · 4 inconclusive · 10 not run" (claims, each counted once)."""
    words = {Verdict.HOLDS: "hold"}  # "6 hold": the count's verb agrees with the claims
    return separator.join(f"{n} {words.get(v, verdict_text(v))}" for v, n in tally.items())


def verdict_text(verdict: Verdict) -> str:
    return verdict.value.replace("_", " ")


def _evidence(evaluation: Evaluation) -> str:
    shown = list(evaluation.evidence[:EVIDENCE_SHOWN])
    rest = len(evaluation.evidence) - len(shown)
    return ", ".join(shown) + (f" (+{rest} more)" if rest > 0 else "")


def _verdict_cell(summary: ClaimSummary) -> str:
    """ "**refuted** 2 of 4 (known doc error)": the verdict, how many evaluations have it."""
    n = len(summary.evaluations)
    same = sum(e.verdict is summary.verdict for e in summary.evaluations)
    cell = f"**{verdict_text(summary.verdict)}**" + (f" {same} of {n}" if n > 1 else "")
    if summary.verdict is Verdict.REFUTED and summary.claim.known_doc_error:
        cell += " (known doc error)"
    return cell


CONDITION_SHOWN_CHARS = 60  # of a condition in the overview line; the evidence has it whole


def _decided_by(summary: ClaimSummary, budget: int) -> str:
    """What decided the claim, in at most `budget` characters of cell: the deciding evaluation's
    measured figure (its reason where it measured nothing) and its condition in brackets, each
    shortened at a word where the line would be too long."""
    e = summary.deciding
    if e is None:
        return "-"
    condition = _shorten(e.condition, CONDITION_SHOWN_CHARS)
    tail = f" [{condition}]" if condition else ""
    return _shorten(e.measured or e.why or "-", budget - len(md_cell(tail))) + tail


def _shorten(text: str, budget: int) -> str:
    """`text` cut at a word to at most `budget` characters as a table cell (" ..." marks a cut)."""
    short, limit = text, budget
    while len(md_cell(short)) > budget and limit > 10:
        short = textwrap.shorten(text, limit, placeholder=" ...")
        limit -= 4  # md_cell may lengthen it (escaped "|")
    return short


def claims_overview(summaries: Sequence[ClaimSummary], width: int = MAX_LINE_CHARS) -> str:
    """One table line per claim: id, verdict, the figure that decided it; not-run claims last."""
    ordered = [s for s in summaries if s.verdict is not Verdict.NOT_RUN]
    ordered += [s for s in summaries if s.verdict is Verdict.NOT_RUN]
    rows = []
    for s in ordered:
        budget = width - len(f"| {md_cell(s.claim.id)} | {md_cell(_verdict_cell(s))} | ") - len(" |")
        rows.append((s.claim.id, _verdict_cell(s), _decided_by(s, budget)))
    return md_table(("Claim", "Verdict", "Decided by (measured, [condition])"), rows)


def _claim_evidence(summary: ClaimSummary) -> list[str]:
    """A claim's evidence: what the lesson says and the settings it is judged at, then each
    evaluation as a list item with its corrected statement, reason, this run's points and case ids."""
    claim = summary.claim
    lines = [
        f"### {claim.id}: {verdict_text(summary.verdict)}",
        "",
        f'{claim.section}: "{claim.quote}". The lesson says: {claim.expected}. Measured: {claim.measures}.',
    ]
    if claim.known_doc_error:
        lines.append(f"Known documentation error: {claim.known_doc_error}.")
    lines += ["", f"Judged at (the lesson's settings): {claim.judged_at}.", ""]
    for e in summary.evaluations:
        lines.append(_evaluation_item(e))
        if e.corrected:
            lines.append(f"  - the measurements support: {e.corrected}")
        if e.why:
            lines.append(f"  - why: {e.why}")
        if e.points:
            lines.append(f"  - judged at (this run's points): {e.points}")
        if e.evidence:
            lines.append(f"  - cases: {_evidence(e)}")
    return lines


def _evaluation_item(e: Evaluation) -> str:
    """An evaluation's list item: its verdict, the condition it was judged under, the measured
    figure (the place for any further "judged at" detail of an evaluation)."""
    head = f"- **{verdict_text(e.verdict)}**" + (f" ({e.condition})" if e.condition else "")
    return f"{head}: {e.measured}" if e.measured else head


def render_claims(run: RunData) -> str:
    """claims.md: one line per claim (its verdict and the figure that decided it), how one verdict
    is chosen, the run's context, then each claim's evidence; no line over `MAX_LINE_CHARS`."""
    summaries = summarize_claims(evaluate_all(run))
    evaluations = sum(len(s.evaluations) for s in summaries)
    lines = [
        "# The lesson's claims, checked against this run",
        "",
        # Notes about the run as a whole (a partial merge, an incomplete run) come first: they
        # qualify every verdict below.
        *[f"{note}\n" for note in merge_notes(run.environment)],
        *[f"**Not planned on this host**: {note}.\n" for note in run.environment.get(MATRIX_NOTES) or []],
        f"Run: {run_context(run)}.",
        "",
        f"**{len(summaries)} claims: {tally_text(claim_tally(summaries))}** ({evaluations} evaluations;"
        " each claim counted once, see [one verdict per claim](#one-verdict-per-claim))",
        "",
        claims_overview(summaries),
        "",
        "## One verdict per claim",
        "",
        CLAIM_VERDICT_RULE,
        "",
        "## The run",
        "",
        header(run).split("\n", 2)[2],  # the run context, without tables.md's title
        "",
        "## Evidence",
        "",
        "Each claim: what the lesson says and the settings it is judged at, then one item per condition"
        " it was checked under, with the measured figure, the verdict, why, this run's points it was judged"
        " at, and the case ids it rests on (their rows are in results.csv).",
    ]
    for summary in summaries:
        lines += ["", *_claim_evidence(summary)]
    return fit_width("\n".join(lines)) + "\n"


def incomplete_mark(run: RunData) -> str:
    """The first line of claims.md and tables.md of a run that lacks runs of its plan
    (`reports.run.completeness`): how many, which, and the command that completes it; "" otherwise."""
    missing = run_incompleteness(run)
    return f"{missing.line()}\n\n" if missing else ""


def render_run(run_dir: Path) -> dict[str, Path]:
    """Write claims.md, tables.md, wall_time.md and plots/*.png into `run_dir`; the paths written
    by name ("claims", "tables", "wall_time", and each plot's file stem)."""
    run_dir = check_run_dir(run_dir)
    run = load_run(run_dir)
    written: dict[str, Path] = {}
    mark = incomplete_mark(run)
    claims_md = run_dir / CLAIMS_MD
    claims_md.write_text(mark + render_claims(run))
    written["claims"] = claims_md
    tables_md = run_dir / TABLES_MD
    tables_md.write_text(mark + render_tables(run))
    written["tables"] = tables_md
    wall_time_md = run_dir / WALL_TIME_MD
    wall_time_md.write_text(render_wall_time(run_dir))
    written["wall_time"] = wall_time_md
    for path in render_plots(run, run_dir / PLOTS_DIR):
        written[path.stem] = path
    return written
