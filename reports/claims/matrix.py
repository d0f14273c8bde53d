"""The claims x runs table: every claim's verdict on every run folder under a root.

`python -m reports claims-matrix reports/reference --out FILE` evaluates the claims on each run
folder found under the root (a folder holding results.jsonl, nested ones included) and writes one
markdown table: a row per claim, a column per run (its profile and the GPU its rows ran on), each
cell the claim's verdict there with a short figure. Where a claim holds on one run and is refuted
on another, a section lists each of those runs' verdicts with the points they were judged at, so
the reason for the difference is on the page. Nothing here measures: it reads the run folders
through `reports.run.frame.load_run` and the claims through `reports.claims.evaluate_all`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reports.claims import CLAIMS, Claim, Evaluation, Verdict, evaluate_all
from reports.markdown import md_table
from reports.run.folder import RESULTS_JSONL
from reports.run.frame import RunData, load_run
from reports.run.rows import status_summary

FIGURE_CHARS = 70  # a cell's figure is cut to this many characters
# A cell's verdict: refuted when any evaluation is, else holds when any does, and so on.
_CELL_ORDER = (Verdict.REFUTED, Verdict.HOLDS, Verdict.INCONCLUSIVE, Verdict.NOT_RUN)
_DECIDED = frozenset({Verdict.HOLDS, Verdict.REFUTED})


class MatrixError(ValueError):
    """The root is not a folder, or no run folder lies under it."""


def find_run_dirs(root: Path) -> list[Path]:
    """The run folders at or under `root` (a folder holding results.jsonl), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise MatrixError(f"{root} is not a folder")
    found = sorted(p.parent for p in root.rglob(RESULTS_JSONL))
    if not found:
        raise MatrixError(f"no run folder ({RESULTS_JSONL}) at or under {root}")
    return found


@dataclass(frozen=True)
class RunColumn:
    """One run folder as a column: where it lies, its profile and the GPU its rows ran on."""

    name: str
    profile: str
    gpu: str
    emulated: bool
    cases: str

    @property
    def header(self) -> str:
        return f"{self.name} ({self.where})"

    @property
    def where(self) -> str:
        return f"{self.profile} on {self.gpu}" + (", emulated" if self.emulated else "")


def run_column(name: str, run: RunData) -> RunColumn:
    """The column of a loaded run: profile(s), GPU(s) (the device where no GPU), case statuses."""
    df = run.results
    if df.empty:
        return RunColumn(name, "-", "-", False, "no results")
    profiles = ", ".join(sorted({str(p) for p in df["profile"].dropna()}))
    gpus = sorted({str(g) for g in df["gpu_name"].dropna() if str(g).strip()})
    devices = sorted({str(d) for d in df["device"].dropna() if str(d).strip()})
    emulated = bool(df["emulated"].fillna(False).astype(bool).any())
    cases = f"{len(df)} ({status_summary(df)})"
    return RunColumn(name, profiles or "-", ", ".join(gpus or devices) or "-", emulated, cases)


def cell_verdict(evaluations: Sequence[Evaluation]) -> Verdict:
    """A claim's verdict on one run: the first of refuted, holds, inconclusive, not run among its
    evaluations."""
    present = {e.verdict for e in evaluations}
    return next(v for v in _CELL_ORDER if v in present)


def short(text: str, chars: int = FIGURE_CHARS) -> str:
    """The first clause of `text` (up to its first "; "), cut to `chars` characters."""
    first = text.split("; ", 1)[0].strip()
    return first if len(first) <= chars else first[: chars - 1].rstrip() + "…"


def cell(claim: Claim, evaluations: Sequence[Evaluation]) -> str:
    """ "**refuted** (known error) 1/5: <figure>": the verdict, how many of the claim's evaluations
    on the run have it, and the first one's measured value (its reason when not decided)."""
    verdict = cell_verdict(evaluations)
    first = next(e for e in evaluations if e.verdict is verdict)
    text = f"**{verdict.value.replace('_', ' ')}**"
    if verdict is Verdict.REFUTED and claim.known_doc_error:
        text += " (known error)"
    if len(evaluations) > 1:
        text += f" {sum(e.verdict is verdict for e in evaluations)}/{len(evaluations)}"
    figure = short(first.measured if verdict in _DECIDED else first.why)
    return text + (f": {figure}" if figure else "")


def _differences(
    claims: Sequence[Claim], columns: Sequence[RunColumn], results: Sequence[dict[str, list[Evaluation]]]
) -> list[str]:
    """A bullet per claim that holds on one run and is refuted on another: on each deciding run,
    the evaluations that gave its cell's verdict, with their conditions and points (most often the
    runs hold different conditions or points of the claim, and these lines show which)."""
    lines = []
    for claim in claims:
        decided = [
            (col, evals[claim.id])
            for col, evals in zip(columns, results)
            if cell_verdict(evals[claim.id]) in _DECIDED
        ]
        if len({cell_verdict(e) for _, e in decided}) < 2:
            continue
        lines.append(f"- **{claim.id}** (judged at {claim.judged_at}):")
        for col, evals in decided:
            verdict = cell_verdict(evals)
            for e in evals:
                if e.verdict is verdict:
                    at = f" at {e.points}" if e.points else ""
                    lines.append(
                        f"  - {col.name} ({col.where}): {e.verdict.value} [{e.condition or '-'}]{at}:"
                        f" {short(e.measured, 160)}"
                    )
    return lines


def claims_matrix(root: Path) -> str:
    """The claims x runs markdown page for every run folder under `root`."""
    root = Path(root)
    columns: list[RunColumn] = []
    results: list[dict[str, list[Evaluation]]] = []
    for run_dir in find_run_dirs(root):
        run = load_run(run_dir)
        name = run_dir.relative_to(root).as_posix() if run_dir != root else run_dir.name
        columns.append(run_column(name, run))
        by_claim: dict[str, list[Evaluation]] = {c.id: [] for c in CLAIMS}
        for claim, evaluation in evaluate_all(run):
            by_claim[claim.id].append(evaluation)
        results.append(by_claim)
    rows = [(claim.id, *(cell(claim, r[claim.id]) for r in results)) for claim in CLAIMS]
    totals = Counter(cell_verdict(r[c.id]) for r in results for c in CLAIMS)
    summary = " · ".join(f"{v.value.replace('_', ' ')} {totals.get(v, 0)}" for v in _CELL_ORDER)
    lines = [
        "# The lesson's claims on every run",
        "",
        f"{len(CLAIMS)} claims x {len(columns)} run folders under `{root.as_posix()}`: **{summary}** cells.",
        "",
        "A cell is the claim's verdict on that run: refuted when any of its evaluations is, else holds"
        " when any holds, else inconclusive, else not run; `k/n` counts the evaluations with that verdict;"
        " the figure is the first such evaluation's measured value (for inconclusive and not run, its"
        " reason). Each run's claims.md has every evaluation, its condition and the points it was judged"
        " at.",
        "",
        "## Verdicts",
        "",
        md_table(("Claim", *(c.header for c in columns)), rows),
        "",
        "## Runs",
        "",
        md_table(
            ("Run folder", "Profile", "GPU the rows ran on", "Emulated", "Cases"),
            [(c.name, c.profile, c.gpu, "yes" if c.emulated else "no", c.cases) for c in columns],
        ),
    ]
    differences = _differences(CLAIMS, columns, results)
    lines += ["", "## Where a claim holds on one run and is refuted on another", ""]
    lines += differences or ["None: every claim decided on two runs has the same verdict on both."]
    return "\n".join(lines) + "\n"


def write_claims_matrix(root: Path, out: Path) -> Path:
    """Write `claims_matrix(root)` to `out` (its folder created); `out`."""
    text = claims_matrix(root)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out
