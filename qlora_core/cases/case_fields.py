"""`FIELD=VALUE` text -> `Case` field values: the one rule for `pytest bench --force` and
`tools/run_cases.py --case` (docs/usage.md#field-values).

A value is typed like the field's default in `Case`: a switch reads true/false (also on/off, 1/0,
any case), a whole-number field an integer, a number field a float, a list field (`target_modules`)
comma-separated items, `extra` `KEY:VALUE` knobs (each checked by `qlora_core.process.faults`), and
every other field the text as given. One `CaseError` names every bad item at once, with the fields
allowed; the values a field accepts are `Case`'s own check (`spec.validate`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from qlora_core.cases.case import FIELD_NAMES, Case, CaseError
from qlora_core.process import faults
from qlora_core.process.faults import EXTRA_KNOBS

_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Case)}
TRUE_WORDS: tuple[str, ...] = ("true", "on", "1")
FALSE_WORDS: tuple[str, ...] = ("false", "off", "0")
LIST_FIELDS: tuple[str, ...] = tuple(
    name for name, default in _DEFAULTS.items() if isinstance(default, tuple)
)
"""The fields whose value is comma-separated items (`target_modules`, `extra`)."""


def field_value(name: str, raw: str) -> Any:
    """`raw` typed like the Case field `name`'s default; ValueError (a CaseError for a bad `extra`
    knob) says what was expected."""
    if name == "extra":
        return _extra_knobs(raw)
    default = _DEFAULTS[name]
    # bool before int: a bool is an int.
    if isinstance(default, bool):
        if raw.lower() not in TRUE_WORDS + FALSE_WORDS:
            raise ValueError("expected true or false (or on/off, 1/0)")
        return raw.lower() in TRUE_WORDS
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ValueError("expected a whole number") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise ValueError("expected a number") from None
    if isinstance(default, tuple):
        return tuple(s.strip() for s in raw.split(",") if s.strip())
    return raw


def parse_fields(items: Iterable[str], allowed: tuple[str, ...] = FIELD_NAMES) -> dict[str, Any]:
    """`FIELD=VALUE` items -> {field: typed value} (`field_value`), in order; one CaseError names
    every bad item, each with why (an unknown field: the fields in `allowed`)."""
    values, problems = _parse(items, allowed)
    if problems:
        raise CaseError(problems)
    return values


def _parse(items: Iterable[str], allowed: tuple[str, ...]) -> tuple[dict[str, Any], list[str]]:
    """The values of the items that parse, and a problem for each one that does not."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or name not in allowed:
            problems.append(f"{item!r}: expected FIELD=VALUE with FIELD one of {list(allowed)}")
            continue
        try:
            values[name] = field_value(name, raw.strip())
        except ValueError as exc:  # a CaseError (a bad knob) lists its problems; say each once
            problems += [f"{item!r}: {why}" for why in getattr(exc, "problems", [str(exc)])]
    return values, problems


def split_case_text(text: str) -> list[str]:
    """`model=m,batch_size=4,target_modules=q_proj,v_proj` -> its `FIELD=VALUE` items: commas
    separate the items, and a piece without `=` after a list field is that field's next item."""
    items: list[str] = []
    for piece in (p for p in text.split(",") if p.strip()):
        if "=" not in piece and items and items[-1].partition("=")[0].strip() in LIST_FIELDS:
            items[-1] += "," + piece
        else:
            items.append(piece)
    return items


def case_from_text(text: str) -> Case:
    """`FIELD=VALUE[,FIELD=VALUE...]` (`split_case_text`) -> a validated Case; one CaseError names
    every problem: each item that does not parse, a missing model, the Case's own checks of the rest."""
    values, problems = _parse(split_case_text(text), FIELD_NAMES)
    if "model" not in values:
        raise CaseError([*problems, "model=... is required (a shape name, a local path or a hub id)"])
    try:
        case = Case(**values)
    except CaseError as exc:
        raise CaseError(problems + exc.problems) from None
    if problems:
        raise CaseError(problems)
    return case


def _extra_knobs(raw: str) -> tuple[tuple[str, str], ...]:
    """`KEY:VALUE[,KEY:VALUE]` -> Case.extra pairs, each knob validated (e.g. `slowdown:10`, the
    test-only device work that shows the release gate catching a known slowdown)."""
    pairs = []
    for item in (x.strip() for x in raw.split(",") if x.strip()):
        key, sep, value = item.partition(":")
        if not sep or key not in EXTRA_KNOBS:
            raise ValueError(
                f"expected KEY:VALUE pairs with KEY one of {list(EXTRA_KNOBS)}, e.g. slowdown:10"
            )
        if key == faults.SLOWDOWN_KEY:
            faults.parse_slowdown(value)
        else:
            faults.parse_fault(value)
        pairs.append((key, value))
    return tuple(pairs)
