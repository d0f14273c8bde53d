"""Case: every field's bad values, cross-field rules, id and hash stability, round trips."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from qlora_core.cases.case import (
    COMPUTE_DTYPES,
    ENGINES,
    LATER_FIELDS,
    LESSON_TARGET_MODULES,
    OPTIMIZERS,
    QUANT_TYPES,
    Case,
    CaseError,
    reference_of,
)

# (field, bad value, words the error must contain)
BAD_VALUES = [
    ("model", "", "model"),
    ("model", 3, "model"),
    ("quant_type", "nf8", str(list(QUANT_TYPES))),
    ("quant_type", "int4", "nf4"),
    ("double_quant", "yes", "double_quant"),
    ("compute_dtype", "float16", str(list(COMPUTE_DTYPES))),
    ("quant_storage", "int8", "quant_storage"),
    ("batch_size", 0, "batch_size"),
    ("batch_size", 1.5, "batch_size"),
    ("batch_size", True, "batch_size"),
    ("seq_len", 4, "seq_len"),
    ("grad_accum", 0, "grad_accum"),
    ("gradient_checkpointing", 1, "gradient_checkpointing"),
    ("prepare_kbit", None, "prepare_kbit"),
    ("lora_r", 0, "lora_r"),
    ("lora_alpha", -1, "lora_alpha"),
    ("lora_dropout", 1.0, "lora_dropout"),
    ("lora_dropout", -0.1, "lora_dropout"),
    ("target_modules", (), "target_modules"),
    ("target_modules", ["q_proj"], "target_modules"),
    ("target_modules", ("q_proj", "q_proj"), "distinct"),
    ("optimizer", "sgd", str(list(OPTIMIZERS))),
    ("lr", 0, "lr"),
    ("lr", -1e-4, "lr"),
    ("warmup_steps", -1, "warmup_steps"),
    ("measured_steps", 0, "measured_steps"),
    ("seed", -1, "seed"),
    ("data", "wikitext", "synthetic"),
    ("extra", (("fault",),), "extra"),
    ("engine", "accelerate", str(list(ENGINES))),
    ("cpu_offload", "yes", "cpu_offload='yes' must be True or False"),
]


@pytest.mark.parametrize(("name", "value", "words"), BAD_VALUES, ids=[f"{n}={v!r}" for n, v, _ in BAD_VALUES])
def test_bad_value_names_field_and_allowed(name, value, words):
    with pytest.raises(CaseError) as err:
        Case(**{"model": "tiny", name: value})
    message = str(err.value)
    assert name in message
    assert words in message
    assert len(err.value.problems) == 1


def test_all_problems_collected_into_one_error():
    with pytest.raises(CaseError) as err:
        Case("tiny", quant_type="nf8", batch_size=0, optimizer="sgd", data="x")
    assert len(err.value.problems) == 4
    for field in ("quant_type", "batch_size", "optimizer", "data"):
        assert field in str(err.value)


def test_reference_rejects_fp32_and_quant_storage():
    with pytest.raises(CaseError, match="fp16 or bf16"):
        Case("tiny", quant_type="none", compute_dtype="fp32")
    with pytest.raises(CaseError, match="quant_storage"):
        Case("tiny", quant_type="none", quant_storage="bf16")


def test_reference_normalizes_not_applicable_fields():
    ref = Case("tiny", quant_type="none")
    assert ref.double_quant is False and ref.prepare_kbit is False
    assert ref == Case("tiny", quant_type="none", double_quant=True, prepare_kbit=True)
    assert reference_of(Case("tiny", compute_dtype="fp16")) == Case(
        "tiny", quant_type="none", compute_dtype="fp16"
    )


def test_id_readable_and_lists_non_defaults():
    assert Case("llama-3.2-3b").id == "llama-3.2-3b-nf4-dq-bf16-b1-s512"
    assert Case("llama-3.2-3b", double_quant=False, compute_dtype="fp16", batch_size=4, seq_len=1024).id == (
        "llama-3.2-3b-nf4-fp16-b4-s1024"
    )
    assert Case("llama-3.2-3b", quant_type="none").id == "llama-3.2-3b-lora16-bf16-b1-s512"
    case = Case(
        "llama-3.1-8b",
        grad_accum=4,
        gradient_checkpointing=False,
        prepare_kbit=False,
        optimizer="adamw_8bit",
        lr=1e-3,
        data="text",
        target_modules=("q_proj", "v_proj"),
    )
    assert case.id == "llama-3.1-8b-nf4-dq-bf16-b1-s512-ga4-nogc-noprep-tm-q+v-adamw8bit-lr0.001-text"
    assert Case("/models/My-Model/").id.startswith("my-model-")


def test_ids_differ_whenever_cases_differ():
    base = Case("tiny")
    variants = [
        base.replace(quant_type="fp4"),
        base.replace(double_quant=False),
        base.replace(compute_dtype="fp16"),
        base.replace(batch_size=2),
        base.replace(seq_len=256),
        base.replace(grad_accum=2),
        base.replace(gradient_checkpointing=False),
        base.replace(prepare_kbit=False),
        base.replace(quant_storage="bf16"),
        base.replace(lora_r=8),
        base.replace(lora_dropout=0.05),
        base.replace(optimizer="paged_adamw_8bit"),
        base.replace(lr=1e-4),
        base.replace(measured_steps=3),
        base.replace(seed=1),
        base.replace(data="text"),
        base.replace(extra=(("fault", "exit"),)),
        base.replace(target_modules=("q_proj",)),
        base.replace(engine="trainer"),
        base.replace(engine="sft"),
    ]
    ids = {c.id for c in [base, *variants]}
    hashes = {c.hash for c in [base, *variants]}
    assert len(ids) == len(variants) + 1
    assert len(hashes) == len(variants) + 1


def test_hash_is_stable_across_processes_and_pinned():
    case = Case("llama-3.2-3b")
    # Pinned: a change here means every stored result and baseline loses its key.
    assert case.hash == "c791c62d4483"
    code = "from qlora_core.cases.case import Case; print(Case('llama-3.2-3b').hash)"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert other.stdout.strip() == case.hash


def test_round_trip_through_json():
    case = Case("tiny", target_modules=("q_proj", "v_proj"), extra=(("fault", "exit"),), lr=3e-4)
    again = Case.from_dict(json.loads(json.dumps(case.to_dict())))
    assert again == case and again.hash == case.hash


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(CaseError, match="unknown field"):
        Case.from_dict({"model": "tiny", "batchsize": 2})


def test_lesson_defaults():
    case = Case("tiny")
    assert (
        case.target_modules
        == LESSON_TARGET_MODULES
        == (
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        )
    )
    assert (case.lora_r, case.lora_alpha, case.lora_dropout) == (16, 16, 0.0)
    assert case.tokens_per_step == 512


# Hashes computed before the `engine` field existed (commit a493ec7): stored runs and baselines
# are keyed by them, so adding a field must leave every one unchanged.
HASHES_BEFORE_ENGINE = [
    (Case("llama-3.2-3b"), "c791c62d4483"),
    (Case("tiny", quant_type="none", compute_dtype="fp16"), "8800d2a71fe1"),
    (
        Case(
            "llama-3.1-8b",
            batch_size=4,
            seq_len=2048,
            optimizer="adamw_8bit",
            gradient_checkpointing=False,
            grad_accum=2,
        ),
        "fdd51be62ec3",
    ),
    (Case("smollm2-135m-instruct", data="text", lr=1e-3, extra=(("fault", "exit"),)), "c3843b4cd594"),
]


@pytest.mark.parametrize(
    ("case", "expected"), HASHES_BEFORE_ENGINE, ids=[c.id for c, _ in HASHES_BEFORE_ENGINE]
)
def test_fields_added_later_leave_old_hashes_unchanged(case, expected):
    assert case.hash == expected
    # A stored case dict has no `engine` key; it reads back as the default and hashes the same.
    stored = {k: v for k, v in case.to_dict().items() if k not in LATER_FIELDS}
    assert Case.from_dict(stored).hash == expected


def test_a_later_field_set_away_from_its_default_changes_hash_and_id():
    base = Case("llama-3.2-3b")
    trainer, sft = base.replace(engine="trainer"), base.replace(engine="sft")
    assert base.engine == "loop"
    assert (trainer.id, sft.id) == (base.id + "-trainer", base.id + "-sft")
    assert len({base.hash, trainer.hash, sft.hash}) == 3
    assert reference_of(sft).engine == "sft"  # the 16-bit reference trains the same way


# -- multi-GPU ---------------------------------------------------------------------
MULTI = Case(
    "llama-3.1-8b", engine="trainer", num_gpus=2, strategy="fsdp", quant_storage="bf16", prepare_kbit=False
)


def test_multi_gpu_id_hash_and_tokens_per_step():
    single = MULTI.replace(num_gpus=1, strategy="single")
    assert MULTI.id == single.id + "-2gpu-fsdp"
    assert MULTI.replace(strategy="ddp").id.endswith("-2gpu-ddp")
    assert (
        MULTI.hash != single.hash
        and single.hash
        == Case.from_dict(
            {k: v for k, v in single.to_dict().items() if k not in ("num_gpus", "strategy")}
        ).hash
    )
    assert MULTI.tokens_per_step == 2 * single.tokens_per_step  # over both ranks


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"strategy": "single"}, "one GPU is strategy 'single'"),
        ({"num_gpus": 1}, "one GPU is strategy 'single'"),
        ({"strategy": "zero3"}, "strategy='zero3' is not one of"),
        ({"num_gpus": 0}, "num_gpus=0 must be an integer"),
        ({"engine": "loop"}, "multi-GPU cases train with 'trainer'"),
        ({"data": "text"}, "held-out perplexity runs on one GPU"),
        ({"quant_storage": "uint8"}, "FSDP shards the 4-bit weights only in a float storage dtype"),
        ({"prepare_kbit": True}, "strategy='fsdp' needs prepare_kbit=False"),
        ({"strategy": "ddp", "cpu_offload": True}, "cpu_offload=True with strategy='ddp': CPU offload"),
        ({"num_gpus": 1, "strategy": "single", "cpu_offload": True}, "with strategy='single'"),
    ],
)
def test_multi_gpu_rules_name_the_problem(changes, words):
    with pytest.raises(CaseError, match=re.escape(words)):
        MULTI.replace(**changes)


def test_cpu_offload_is_tagged_in_the_id_and_leaves_the_case_without_it_unchanged():
    offload = MULTI.replace(cpu_offload=True)
    assert offload.id == MULTI.id + "-offload" and offload.hash != MULTI.hash
    assert "offload" not in MULTI.id and not MULTI.cpu_offload
    # The 70B two-card case as stored before `cpu_offload` existed: same id, same hash.
    big = Case(
        "llama-2-70b", compute_dtype="bf16", quant_storage="bf16", prepare_kbit=False, seq_len=512,
        engine="trainer", warmup_steps=1, measured_steps=3, num_gpus=2, strategy="fsdp", prequantized=True,
    )  # fmt: skip
    assert big.id == "llama-2-70b-nf4-dq-bf16-b1-s512-noprep-qs-bf16-w1m3-trainer-2gpu-fsdp-preq"
    assert big.hash == "24f843668509"
    assert big.replace(cpu_offload=True).id == big.id.replace("-fsdp-preq", "-fsdp-offload-preq")


def test_ddp_keeps_uint8_storage_and_prepare():
    # FSDP refuses both (above); DDP keeps the whole model on each rank, so both are valid there.
    with pytest.raises(CaseError, match="quant_storage equal to compute_dtype") as refused:
        MULTI.replace(quant_storage="uint8", prepare_kbit=True)
    assert "needs prepare_kbit=False" in str(refused.value)
    ddp = MULTI.replace(strategy="ddp", quant_storage="uint8", prepare_kbit=True)
    assert (ddp.strategy, ddp.quant_storage, ddp.prepare_kbit) == ("ddp", "uint8", True)
    assert ddp.id.endswith("-2gpu-ddp") and ddp.hash != MULTI.replace(strategy="ddp").hash
