"""reports.claims.verification: the claims of "Memory Verification", on hand-made rows."""

from __future__ import annotations

from reports.claims import Verdict, claim_by_id, evaluate
from reports.claims.verification import check_3b_headroom, check_3b_load

EIGHT = "llama-3.1-8b"
THREE = "llama-3.2-3b"


# -- the 3B model on the T4 -------------------------------------------------------------------------
def _three_loaded(build, alloc: float, reserved: float, **fields):
    fields = {"compute_dtype": "fp16", **fields}
    return build.result(
        THREE,
        **build.params(THREE),
        **build.gpu(),
        load_alloc_gib=alloc,
        load_reserved_gib=reserved,
        **fields,
    )


def test_3b_load_holds_and_refutes_allocated_and_reserved(build):
    evals = check_3b_load(build.run([_three_loaded(build, 2.80, 3.6)]))
    assert build.pick(evals, "allocated").verdict is Verdict.HOLDS
    reserved = build.pick(evals, "reserved")
    assert reserved.verdict is Verdict.REFUTED and "3.60 GiB" in reserved.corrected


def test_3b_load_uses_the_lessons_compute_dtype(build):
    rows = [_three_loaded(build, 2.8, 3.1), _three_loaded(build, 4.0, 4.2, compute_dtype="fp32")]
    evals = check_3b_load(build.run(rows))
    assert len(evals) == 2 and all("fp16" in e.condition for e in evals)
    assert build.verdicts(evals) == ["holds", "holds"]


def test_3b_load_inconclusive_not_run_and_gpu_only(build):
    (failed,) = check_3b_load(build.run([build.result(THREE, status="crashed", **build.gpu())]))
    assert failed.verdict is Verdict.INCONCLUSIVE
    (none,) = check_3b_load(build.run([build.result(EIGHT, **build.gpu())]))
    assert none.verdict is Verdict.NOT_RUN
    cpu = build.run(
        [build.result(THREE, profile="cpu", device="cpu", load_alloc_gib=3.0, load_reserved_gib=3.0)]
    )
    assert evaluate(claim_by_id("t4-3b-load"), cpu)[0].verdict is Verdict.NOT_RUN


def test_3b_headroom(build):
    evals = check_3b_headroom(build.run([_three_loaded(build, 2.9, 3.0)]))
    assert build.verdicts(evals) == ["holds", "holds"]
    assert "12.00 GiB" in build.pick(evals, "leaving").measured
    evals = check_3b_headroom(build.run([_three_loaded(build, 2.07, 2.17)]))
    assert build.pick(evals, "~3GB").verdict is Verdict.REFUTED
    assert build.pick(evals, "leaving").verdict is Verdict.HOLDS  # 12.83 GiB is within 15%
    evals = check_3b_headroom(build.run([_three_loaded(build, 6.0, 7.0)]))
    assert build.pick(evals, "leaving").verdict is Verdict.REFUTED
    assert check_3b_headroom(build.run([build.result(EIGHT)]))[0].verdict is Verdict.NOT_RUN


def test_3b_load_not_run_without_the_lessons_compute_dtype(build):
    (only,) = check_3b_load(build.run([_three_loaded(build, 2.8, 3.1, compute_dtype="fp32")]))
    assert only.verdict is Verdict.NOT_RUN and "fp32" in only.why


def test_3b_headroom_inconclusive_when_the_3b_rows_failed(build):
    (only,) = check_3b_headroom(build.run([build.result(THREE, status="crashed", **build.gpu())]))
    assert only.verdict is Verdict.INCONCLUSIVE and "1 crashed" in only.why
