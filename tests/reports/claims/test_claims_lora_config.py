"""reports.claims.lora_config: the claims of "Combining QLoRA with LoRA Config", on hand-made rows."""

from __future__ import annotations

from qlora_core.cases.case import LESSON_TARGET_MODULES
from reports.claims import Verdict
from reports.claims.lora_config import (
    check_adapter_dtype,
    check_print_trainable,
    configs_giving,
    lora_param_count,
)

THREE = "llama-3.2-3b"


# -- print_trainable_parameters -----------------------------------------------------------------
def test_print_trainable_refuted_with_the_config_the_lesson_numbers_fit(build):
    evals = check_print_trainable(build.run([build.result(THREE, **build.params(THREE))]))
    assert build.verdicts(evals) == ["refuted", "refuted", "refuted"]
    trainable = build.pick(evals, "trainable params")
    assert "24,313,856" in trainable.measured and "agrees" in trainable.why
    assert "r=16 on q+k+v+o of llama-3.2-1b" in trainable.corrected
    assert "3,210,341,376" in build.pick(evals, "all params").corrected
    assert "0.1060%" in build.pick(evals, "trainable%").why


def test_print_trainable_holds_on_the_lessons_numbers_and_flags_a_count_mismatch(build):
    row = build.result(THREE, total_params=3_213_749_248, trainable_params=3_407_872)
    evals = check_print_trainable(build.run([row]))
    assert build.verdicts(evals) == ["holds", "holds", "refuted"]  # 0.1060%, not the printed 0.1061%
    assert "DISAGREES" in build.pick(evals, "trainable params").why


def test_print_trainable_ignores_other_configs_and_fails_cleanly(build):
    other = build.result(THREE, lora_r=8, **build.params(THREE))
    assert check_print_trainable(build.run([other]))[0].verdict is Verdict.NOT_RUN
    crashed = build.result(THREE, status="crashed")
    assert check_print_trainable(build.run([crashed]))[0].verdict is Verdict.INCONCLUSIVE


# -- adapter dtype --------------------------------------------------------------------------------
def test_adapter_dtype_per_prepare_condition(build):
    rows = [
        build.result(THREE, **build.params(THREE, "float32")),
        build.result(THREE, prepare_kbit=False, **build.params(THREE, "bfloat16")),
    ]
    evals = check_adapter_dtype(build.run(rows))
    on = build.pick(evals, "prepare_kbit on")
    assert on.verdict is Verdict.REFUTED and "float32" in on.corrected
    assert build.pick(evals, "prepare_kbit off").verdict is Verdict.HOLDS
    assert check_adapter_dtype(build.run([build.result(THREE)]))[0].verdict is Verdict.INCONCLUSIVE
    assert check_adapter_dtype(build.run([]))[0].verdict is Verdict.NOT_RUN


def test_print_trainable_share_holds_when_it_prints_as_the_lesson(build):
    row = build.result(THREE, total_params=1_000_000, trainable_params=1_061)
    assert build.pick(check_print_trainable(build.run([row])), "trainable%").verdict is Verdict.HOLDS


def test_lora_param_count_hand_count_and_derived_configs():
    # 28 layers x 16 x ((3072+3072) + (3072+1024) x 2 + (3072+3072) + (3072+8192) x 2 + (8192+3072))
    assert lora_param_count("llama-3.2-3b", 16, LESSON_TARGET_MODULES) == 24_313_856
    assert lora_param_count("llama-3.2-1b", 16, ("q_proj", "k_proj", "v_proj", "o_proj")) == 3_407_872
    # head_dim None: hidden // heads (Llama-2-7B, no grouped-query attention)
    assert lora_param_count("llama-2-7b", 8, ("q_proj", "v_proj")) == 32 * 8 * (4096 + 4096) * 2
    found = configs_giving(3_407_872)
    assert "r=16 on q+k+v+o of llama-3.2-1b" in found and "r=8 on q+v of llama-3.1-8b" in found
    assert not any("llama-3.2-3b" in f for f in found)


# -- the count of the architecture without weights (every tier) -------------------------------------
def _counts(model: str = THREE, trainable: int = 24_313_856, total: int = 3_237_063_680, r: int = 16):
    return {
        "param_counts": [
            {
                "model": model,
                "lora_r": r,
                "target_modules": ",".join(LESSON_TARGET_MODULES),
                "trainable_params": trainable,
                "total_params": total,
                "base_params": total - trainable,
                "method": "init_empty_weights + peft get_nb_trainable_parameters",
            }
        ]
    }


def test_print_trainable_decided_on_a_cpu_run_from_the_count_without_weights(build):
    tiny = build.result("tiny", profile="cpu", device="cpu")
    evals = check_print_trainable(build.run([tiny], _counts()))
    assert build.verdicts(evals) == ["refuted", "refuted", "refuted"]
    trainable = build.pick(evals, "trainable params (architecture without weights)")
    assert trainable.evidence == ("measurements/param_counts",) and "agrees" in trainable.why
    assert "24,313,856" in trainable.measured
    lesson = check_print_trainable(build.run([tiny], _counts(trainable=3_407_872, total=3_213_749_248)))
    assert build.verdicts(lesson) == ["holds", "holds", "refuted"]


def test_print_trainable_reads_both_sources_and_ignores_other_counts(build):
    row = build.result(THREE, **build.params(THREE))
    both = check_print_trainable(build.run([row], _counts()))
    assert len(both) == 6 and {e.condition for e in both} >= {
        "all params",
        "all params (architecture without weights)",
    }
    for other in (_counts(model="llama-3.1-8b"), _counts(r=8)):
        assert check_print_trainable(build.run([], other))[0].verdict is Verdict.NOT_RUN
