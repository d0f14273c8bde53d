"""Render a run folder's reports: claims.md, tables.md, wall_time.md and plots/*.png, from its
stored results.

`render_run` reads only the folder (`load_run`), so `pytest bench` at session end and
`python -m reports render RUN_DIR` later produce the same files.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from reports.claims import Claim, Evaluation, Verdict, evaluate_all
from reports.completeness import run_incompleteness
from reports.frame import RESULTS_JSONL, RunData, load_run
from reports.markdown import md_table
from reports.merge import merge_notes
from reports.plots import render_plots
from reports.tables import header, render_tables
from reports.wall_time import WALL_TIME_MD, render_wall_time

CLAIMS_MD = "claims.md"
TABLES_MD = "tables.md"
PLOTS_DIR = "plots"
EVIDENCE_SHOWN = 4  # case ids listed per row; the rest are counted
_VERDICT_ORDER = (Verdict.HOLDS, Verdict.REFUTED, Verdict.INCONCLUSIVE, Verdict.NOT_RUN)


class RunFolderError(FileNotFoundError):
    """The folder is missing or holds no results.jsonl."""


def check_run_dir(run_dir: Path) -> Path:
    """`run_dir` as a Path when it is a run folder; RunFolderError saying what is wrong otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist (or is not a folder)")
    if not (run_dir / RESULTS_JSONL).is_file():
        raise RunFolderError(f"{run_dir} has no {RESULTS_JSONL}: not a qlora-bench run folder")
    return run_dir


def _evidence(evaluation: Evaluation) -> str:
    shown = list(evaluation.evidence[:EVIDENCE_SHOWN])
    rest = len(evaluation.evidence) - len(shown)
    return ", ".join(shown) + (f" (+{rest} more)" if rest > 0 else "")


def verdict_counts(results: list[tuple[Claim, Evaluation]]) -> dict[Verdict, int]:
    """Evaluations per verdict, every verdict present (0 where none)."""
    counts = Counter(e.verdict for _, e in results)
    return {v: counts.get(v, 0) for v in _VERDICT_ORDER}


def render_claims(run: RunData) -> str:
    """claims.md: verdict counts, one table row per (claim, condition), then the reasons."""
    results = evaluate_all(run)
    counts = verdict_counts(results)
    claims = len({c.id for c, _ in results})
    summary = " · ".join(f"{v.value.replace('_', ' ')} {n}" for v, n in counts.items())
    lines = [
        "# The lesson's claims, checked against this run",
        "",
        f"**{summary}** ({len(results)} evaluations of {claims} claims)",
        "",
        header(run).split("\n", 2)[2],  # the run context, without tables.md's title
        "",
        *[f"{note}\n" for note in merge_notes(run.environment)],
        "## Verdicts",
        "",
    ]
    rows = [
        (
            claim.id,
            f'"{claim.quote}": {claim.expected}',
            e.measured or "-",
            f"**{e.verdict.value.replace('_', ' ')}**",
            e.condition or "-",
            e.points or "-",
            _evidence(e) or "-",
        )
        for claim, e in results
    ]
    headers = (
        "Claim",
        "The lesson says",
        "Measured",
        "Verdict",
        "Condition",
        "Judged at (this run's points)",
        "Evidence (case ids)",
    )
    lines.append(md_table(headers, rows))
    lines += ["", "## Judged at: the lesson's settings each claim is checked at", ""]
    judged = {c.id: c.judged_at for c, _ in results}
    lines += [f"- **{claim_id}**: {text}" for claim_id, text in judged.items()]
    refuted = [(c, e) for c, e in results if e.verdict is Verdict.REFUTED]
    if refuted:
        lines += ["", "## Refuted: what the measurements support", ""]
        for claim, e in refuted:
            known = f" Known documentation error: {claim.known_doc_error}." if claim.known_doc_error else ""
            cond = f" ({e.condition})" if e.condition else ""
            lines.append(f"- **{claim.id}**{cond}: {e.corrected}.{known} Why: {e.why or '-'}")
    unresolved = [(c, e) for c, e in results if e.verdict in (Verdict.NOT_RUN, Verdict.INCONCLUSIVE)]
    if unresolved:
        lines += ["", "## Not run and inconclusive: why", ""]
        for claim, e in unresolved:
            cond = f" ({e.condition})" if e.condition else ""
            lines.append(f"- **{claim.id}**{cond}, {e.verdict.value.replace('_', ' ')}: {e.why}")
    return "\n".join(lines) + "\n"


def incomplete_mark(run: RunData) -> str:
    """The first line of claims.md and tables.md of a run that lacks runs of its plan
    (`reports.completeness`): how many, which, and the command that completes it; "" otherwise."""
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
