"""The lesson's claims against this session's run: one test per claim, after every matrix case.

A claim's verdicts decide the test (`reports.claims.claim_outcome`): refuted fails, or xfails
when the claim carries a known documentation error measured on a real GPU; not run and
inconclusive skip with the reason; holds passes. The plugin orders this module after the
matrix, so `completed_run` holds every case of the session.
"""

from __future__ import annotations

import pytest

from reports.claims import CLAIMS, Claim, claim_outcome, evaluate
from reports.run.frame import RunData


@pytest.mark.parametrize("claim", CLAIMS, ids=[c.id for c in CLAIMS])
def test_claim(claim: Claim, completed_run: RunData) -> None:
    """The lesson's claim holds on this run's measurements (see reports/claims.py)."""
    kind, message = claim_outcome(claim, evaluate(claim, completed_run))
    if kind == "fail":
        pytest.fail(message, pytrace=False)
    if kind == "xfail":
        pytest.xfail(message)
    if kind == "skip":
        pytest.skip(message)
