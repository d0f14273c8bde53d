"""FIELD=VALUE text -> Case fields: one rule for --force and run_cases' --case, every problem named."""

from __future__ import annotations

import pytest

from qlora_core.cases.case import Case, CaseError
from qlora_core.cases.case_fields import (
    LIST_FIELDS,
    case_from_text,
    field_value,
    parse_fields,
    split_case_text,
)


@pytest.mark.parametrize(
    ("name", "raw", "value"),
    [
        ("double_quant", "false", False),
        ("double_quant", "ON", True),
        ("prepare_kbit", "1", True),
        ("batch_size", "4", 4),
        ("lr", "2e-4", 2e-4),
        ("lr", "1", 1.0),  # a float field's value is a float: the case hashes as the matrix's
        ("lora_dropout", "0.05", 0.05),
        ("target_modules", "q_proj, v_proj", ("q_proj", "v_proj")),
        ("target_modules", "q_proj", ("q_proj",)),
        ("engine", "trainer", "trainer"),
        ("model", "org/name", "org/name"),
        ("extra", "slowdown:10,fault:exit@load", (("slowdown", "10"), ("fault", "exit@load"))),
    ],
)
def test_a_value_is_typed_like_the_case_field(name, raw, value):
    got = field_value(name, raw)
    assert got == value and type(got) is type(value)


def test_every_bad_item_is_named_with_what_was_expected():
    with pytest.raises(CaseError) as err:
        parse_fields(
            ["batchsize=2", "prepare_kbit=maybe", "lr=fast", "seq_len=1.5", "extra=speedup:5", "oops"]
        )
    assert err.value.problems[:4] == [
        f"'batchsize=2': expected FIELD=VALUE with FIELD one of {list(Case.__dataclass_fields__)}",
        "'prepare_kbit=maybe': expected true or false (or on/off, 1/0)",
        "'lr=fast': expected a number",
        "'seq_len=1.5': expected a whole number",
    ]
    assert "KEY one of ['fault', 'slowdown']" in err.value.problems[4]
    assert err.value.problems[5].startswith("'oops': expected FIELD=VALUE")
    with pytest.raises(CaseError, match="FIELD one of \\['lr'\\]"):
        parse_fields(["batch_size=2"], allowed=("lr",))


def test_a_case_text_splits_at_commas_and_a_list_field_keeps_its_items():
    assert LIST_FIELDS == ("target_modules", "extra")
    assert split_case_text("model=m,target_modules=q_proj,v_proj,lr=1e-4") == [
        "model=m",
        "target_modules=q_proj,v_proj",
        "lr=1e-4",
    ]
    assert split_case_text("model=m,oops,,") == ["model=m", "oops"]  # not a list field: its own item
    case = case_from_text("model=tiny,target_modules=q_proj,v_proj,extra=slowdown:10,fault:exit@load")
    assert case.target_modules == ("q_proj", "v_proj")
    assert case.extra == (("slowdown", "10"), ("fault", "exit@load"))


def test_a_case_text_names_every_problem_at_once():
    with pytest.raises(CaseError) as err:
        case_from_text("model=tiny,batch_size=x,engine=nope")
    assert err.value.problems == [
        "'batch_size=x': expected a whole number",
        "engine='nope' is not one of ['loop', 'trainer', 'sft']",  # the Case's own check of the rest
    ]
    with pytest.raises(CaseError) as err:
        case_from_text("batch_size=2,oops")
    assert len(err.value.problems) == 2 and err.value.problems[1].startswith("model=... is required")
    assert case_from_text("model=tiny,double_quant=false") == Case("tiny", double_quant=False)
