"""reports.claims.common: row selection that ends in a verdict, and the lesson's size range."""

from __future__ import annotations

import pandas as pd

from reports.claims import Verdict
from reports.claims.common import lesson_sized, select


def test_select_turns_missing_rows_into_not_run_or_inconclusive(build):
    df = build.run([build.result(status="crashed"), build.result(batch_size=2)]).results
    absent = select(df.iloc[0:0], "x", condition="c")
    assert absent.verdict is Verdict.NOT_RUN and absent.condition == "c" and absent.evidence == ()
    failed = select(df[df["status"] == "crashed"], "x")
    assert failed.verdict is Verdict.INCONCLUSIVE and "1 crashed" in failed.why and failed.evidence
    unmeasured = select(df, "x", ("weight_bytes",))
    assert unmeasured.verdict is Verdict.INCONCLUSIVE and "weight_bytes" in unmeasured.why
    df.loc[df["batch_size"] == 2, "weight_bytes"] = 10
    rows = select(df, "x", ("weight_bytes",))
    assert isinstance(rows, pd.DataFrame) and list(rows["batch_size"]) == [2]


def test_lesson_sized_keeps_3b_to_13b_and_names_the_rest(build):
    df = build.run(
        [
            build.result(**build.params("llama-3.2-3b")),
            build.result("llama-3.1-8b", **build.params("llama-3.1-8b")),
            build.result("smollm2-135m-instruct", **build.params("smollm2-135m-instruct")),
            # Llama-2-70B's base count (the registry's), LoRA r=16 on the seven projections.
            build.result(
                "llama-2-70b", total_params=68_976_648_192 + 207_093_760, trainable_params=207_093_760
            ),
        ]
    ).results
    kept, note = lesson_sized(df)
    assert list(kept["model"]) == ["llama-3.2-3b", "llama-3.1-8b"]
    assert "below 2.5B params not judged: smollm2-135m-instruct" in note
    assert "above 15B params not judged: llama-2-70b" in note
