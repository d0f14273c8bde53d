"""The lesson's claims: one module per lesson section, each check beside its claim entry.

Beside them, what the claims share: `numerics`, `nan`, `noise_floors`, `known_errors`, and
`matrix` (every claim's verdict on every run under a root). `CLAIMS` is assembled here, once, in
the lesson's order, with the known documentation errors applied; the claim model lives in
`reports.claims.model`. How a claim reads "GB" (10**9 bytes or a GiB): docs/usage.md#claimsmd.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from reports.claims import (
    calculation,
    compute_dtype,
    double_quant,
    intro,
    issues,
    lora_config,
    memory_problem,
    nf4,
    t4_budget,
    tradeoffs,
    verification,
)
from reports.claims.known_errors import KNOWN_DOC_ERRORS
from reports.claims.model import (
    CLAIM_VERDICT_RULE,
    Claim,
    Evaluation,
    Verdict,
    claim_outcome,
    claim_verdict,
    deciding_evaluation,
    evaluate,
    evaluate_claims,
)
from reports.run.frame import RunData

__all__ = [
    "CLAIMS",
    "CLAIM_VERDICT_RULE",
    "Claim",
    "Evaluation",
    "Verdict",
    "claim_by_id",
    "claim_outcome",
    "claim_verdict",
    "deciding_evaluation",
    "evaluate",
    "evaluate_all",
]

# The lesson's sections in its order; each module's CLAIMS are in the order the section makes them.
SECTIONS = (
    intro,
    memory_problem,
    nf4,
    double_quant,
    compute_dtype,
    verification,
    calculation,
    t4_budget,
    lora_config,
    issues,
    tradeoffs,
)


def with_known_errors(claims: Iterable[Claim], known: Mapping[str, str]) -> tuple[Claim, ...]:
    """`claims` with each known documentation error attached; a ValueError when `known` names a
    claim that does not exist (a stale or misspelt registry entry)."""
    claims = tuple(claims)
    unknown = set(known) - {c.id for c in claims}
    if unknown:
        raise ValueError(f"known_errors names claims that do not exist: {sorted(unknown)}")
    return tuple(dataclasses.replace(c, known_doc_error=known.get(c.id, "")) for c in claims)


CLAIMS: tuple[Claim, ...] = with_known_errors(
    (claim for section in SECTIONS for claim in section.CLAIMS), KNOWN_DOC_ERRORS
)


def evaluate_all(run: RunData) -> list[tuple[Claim, Evaluation]]:
    """Every claim's evaluations, in the lesson's order (see `evaluate_claims`)."""
    return evaluate_claims(CLAIMS, run)


def claim_by_id(claim_id: str) -> Claim:
    """The claim with id `claim_id`; a KeyError naming the known ids otherwise."""
    for claim in CLAIMS:
        if claim.id == claim_id:
            return claim
    raise KeyError(f"no claim {claim_id!r}; known: {', '.join(c.id for c in CLAIMS)}")
