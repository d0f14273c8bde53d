"""Quality: perplexity on held-out real text of the real model quantized as NF4 and FP4 (with and
without double quantization) and in 16-bit. The in-process measurements of the formats (code
tables, scaling-factor layout, reconstruction error) are in test_quantization.py."""

import math

FAMILY = "quality"


def test_case(case_result):
    assert case_result.quality.ppl_before is not None and math.isfinite(case_result.quality.ppl_before)
    assert case_result.quality.ppl_after is not None and math.isfinite(case_result.quality.ppl_after)
    assert case_result.quality.ppl_before > 1.0
