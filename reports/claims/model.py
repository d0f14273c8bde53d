"""The claim model: a `Claim` of the lesson, the `Evaluation`s a run gives it, and how they end.

A `Claim` quotes the few words of the lesson it checks and states what the lesson says
(`expected`, with its tolerance). Those numbers are hypotheses: a check never copies them into a
measured value. Its verdict comes only from measured columns of `RunData.results` and from the
measurement tables in `RunData.measurements`; where the rows are missing or did not run ok, the
verdict is `not_run` or `inconclusive` with the reason, never `holds`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from qlora_core.cases.gpus import PROFILES, GpuProfile
from reports.claims.points import points_of
from reports.run.frame import RunData


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
    points: str = ""
    """The run's points this verdict was judged at, in words ("llama-3.2-3b b1 s512, b4 s2048"),
    a point judged by what it needed uncapped labelled so; `evaluate` fills it from `evidence`
    where the check left it empty (`reports.claims.points`)."""

    def __post_init__(self) -> None:
        # A refutation without the statement the measurement supports would leave the reader with
        # "wrong" and nothing else; a corrected statement on any other verdict would contradict it.
        if (self.verdict is Verdict.REFUTED) != bool(self.corrected):
            raise ValueError(
                f"a {self.verdict.value} evaluation must {'' if self.verdict is Verdict.REFUTED else 'not '}"
                f"carry a corrected statement (got {self.corrected!r}; condition {self.condition!r})"
            )


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
    judged_at: str
    """The settings the claim is judged at, taken from the lesson (its examples, its T4 budget point,
    the ranges it names), and which rows of a run stand for them; the same on every profile, so a
    verdict can differ between profiles only where the rows differ (claims.md names them)."""
    known_doc_error: str = ""
    """Set only after a real GPU measurement showed the lesson wrong: the corrected value."""
    applies_to: ProfilePredicate | None = None
    multi_card: bool = False
    """The check reads a multi-card profile's rows (t4x2, ...). The lesson's claims are about one
    card: a multi-card run trains only the `multigpu` family (`matrix.build_matrix`), and its
    per-rank peaks are no single GPU's training total; those claims are judged on the card's own
    profile's run (`--gpu t4`), and read no row of a multi-card profile."""

    def __post_init__(self) -> None:
        if not self.judged_at.strip():
            raise ValueError(f"claim {self.id!r} states no judged_at: the lesson's settings it is judged at")


def holds(
    measured: str, evidence: Iterable[str] = (), condition: str = "", why: str = "", points: str = ""
) -> Evaluation:
    """The measurement agrees with the lesson."""
    return Evaluation(Verdict.HOLDS, measured, "", tuple(evidence), condition, why, points)


def refuted(
    measured: str,
    corrected: str,
    evidence: Iterable[str] = (),
    condition: str = "",
    why: str = "",
    points: str = "",
) -> Evaluation:
    """The measurement contradicts the lesson; `corrected` states what it supports."""
    return Evaluation(Verdict.REFUTED, measured, corrected, tuple(evidence), condition, why, points)


def inconclusive(
    why: str, measured: str = "", evidence: Iterable[str] = (), condition: str = "", points: str = ""
) -> Evaluation:
    """Rows ran but cannot decide (failed, unmeasured, or within noise); `why` says which."""
    return Evaluation(Verdict.INCONCLUSIVE, measured, "", tuple(evidence), condition, why, points)


def not_run(why: str, condition: str = "", evidence: Iterable[str] = ()) -> Evaluation:
    """The run has no rows that could answer; `why` names what is missing."""
    return Evaluation(Verdict.NOT_RUN, "", "", tuple(evidence), condition, why)


def with_points(evaluation: Evaluation, run: RunData) -> Evaluation:
    """`evaluation` with its points named: the check's own text, else the points of its evidence."""
    if evaluation.points:
        return evaluation
    return dataclasses.replace(evaluation, points=points_of(run.results, evaluation.evidence))


def _run_profiles(run: RunData) -> list[str]:
    return sorted({str(p) for p in run.results["profile"].dropna()}) if "profile" in run.results else []


def evaluate(claim: Claim, run: RunData) -> list[Evaluation]:
    """The claim's evaluations on the rows of the profiles it applies to.

    A claim that applies to no profile of the run, or a run without results, is not_run.
    """
    if run.results.empty:
        return [not_run("no results in this run")]
    if not claim.multi_card and "profile" in run.results:
        names = _run_profiles(run)
        single = [n for n in names if n not in PROFILES or PROFILES[n].count == 1]
        if not single:
            return [
                not_run(
                    f"a claim about one card; this run's profile {', '.join(names)} is a multi-card"
                    f" machine (judged on its card's profile: --gpu {PROFILES[names[0]].card_name})"
                )
            ]
        run = dataclasses.replace(run, results=run.results[run.results["profile"].isin(single)])
    if claim.applies_to is not None:
        names = _run_profiles(run)
        keep = [n for n in names if n in PROFILES and claim.applies_to(PROFILES[n])]
        if not keep:
            return [
                not_run(f"applies to {claim.applies_to.description}; this run's profile: {', '.join(names)}")
            ]
        run = dataclasses.replace(run, results=run.results[run.results["profile"].isin(keep)])
    evaluations = claim.check(run) or [inconclusive("the check produced no evaluation")]
    return [with_points(e, run) for e in evaluations]


def evaluate_claims(claims: Iterable[Claim], run: RunData) -> list[tuple[Claim, Evaluation]]:
    """Each claim's evaluations, in order. A check that raises is reported inconclusive with the
    error, so one broken check cannot hide the others (its bench test still fails on the exception)."""
    out: list[tuple[Claim, Evaluation]] = []
    for claim in claims:
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


CLAIM_VERDICT_ORDER = (Verdict.REFUTED, Verdict.HOLDS, Verdict.INCONCLUSIVE, Verdict.NOT_RUN)
"""Which verdict a claim takes from its evaluations: the first of these that any evaluation has."""
CLAIM_VERDICT_RULE = (
    "A claim is checked under each condition it covers (a model, a precision, a setting): one"
    " evaluation each. It is counted once, with one verdict: **refuted** if any evaluation is"
    " refuted (the lesson's sentence is wrong under at least one condition it covers); else"
    " **holds** if any evaluation holds (the others could not decide); else **inconclusive** if"
    " rows ran but none could decide; else **not run**. The figure shown for it is the first"
    " evaluation with that verdict, in the order the check lists its conditions."
    " The claim's bench test ends the same way: refuted fails (xfails for a known documentation"
    " error), holds passes, the others skip."
)


def claim_verdict(evaluations: Sequence[Evaluation]) -> Verdict:
    """The claim's one verdict from its evaluations (`CLAIM_VERDICT_RULE`); not run for none."""
    present = {e.verdict for e in evaluations}
    return next((v for v in CLAIM_VERDICT_ORDER if v in present), Verdict.NOT_RUN)


def deciding_evaluation(evaluations: Sequence[Evaluation]) -> Evaluation | None:
    """The evaluation whose figure stands for the claim: the first with the claim's verdict."""
    verdict = claim_verdict(evaluations)
    return next((e for e in evaluations if e.verdict is verdict), None)


def claim_outcome(claim: Claim, evaluations: Sequence[Evaluation]) -> tuple[str, str]:
    """How a claim's test ends, and its message: ("fail" | "xfail" | "skip" | "pass", text).

    From the claim's one verdict (`claim_verdict`): refuted fails, unless the claim carries a
    known documentation error (xfail); holds passes; inconclusive and not run skip with the
    reasons (inconclusive ones prefixed "inconclusive:").
    """
    verdict = claim_verdict(evaluations)
    refuted_ = [e for e in evaluations if e.verdict is Verdict.REFUTED]
    if verdict is Verdict.REFUTED and not claim.known_doc_error:
        return "fail", f"{claim.id} refuted: " + " | ".join(_describe(e) for e in refuted_)
    if verdict is Verdict.REFUTED:
        measured = " | ".join(e.measured for e in refuted_)
        return "xfail", f"known documentation error: {claim.known_doc_error}; measured {measured}"
    if verdict is not Verdict.HOLDS:
        reasons = [
            ("inconclusive: " if e.verdict is Verdict.INCONCLUSIVE else "")
            + e.why
            + (f" [{e.condition}]" if e.condition else "")
            for e in evaluations
        ]
        return "skip", "; ".join(reasons)
    held = sum(e.verdict is Verdict.HOLDS for e in evaluations)
    return "pass", f"{claim.id}: {held} of {len(evaluations)} evaluation(s) hold"
