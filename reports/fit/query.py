"""The fit advisor's question: a GPU and a QLoRA setting, as the matrix's `Case` fields.

The options are the `Case` fields a user sets (`--batch-size`, `--seq-len`, `--grad-accum`,
`--gradient-checkpointing`, `--optimizer`, `--compute-dtype`, `--quant-type`, `--double-quant`),
with the Case's own allowed values and defaults (`qlora_core.cases.case`: one source), except the
compute dtype, whose default is the profile's (`matrix.lesson_dtype`: fp16 on a T4, which has no
bf16). `add_query_options` declares them for both front ends: `python -m reports fit` and
`tools/measure_fit.py`. `query_case` checks every value at once, before any run folder is read.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qlora_core.cases.case import COMPUTE_DTYPES, OPTIMIZERS, QUANT_TYPES, Case, CaseError
from qlora_core.cases.gpus import PROFILE_NAMES, GpuProfile, get_profile
from qlora_core.cases.tiers import LADDER_START_LR, USERS_ENGINE, lesson_dtype, tier_for
from qlora_core.models.registry import REAL_MODEL, SHAPES

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reference"
CASE_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Case)}
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": OPTIMIZERS,
    "compute_dtype": COMPUTE_DTYPES,
    "quant_type": QUANT_TYPES,
}
SWITCHES: tuple[str, ...] = ("gradient_checkpointing", "double_quant")
SWITCH_VALUES: dict[str, bool] = {"on": True, "off": False, "true": True, "false": False}
# The models whose architecture the advisor knows (`fit_model.shape_of`): the registry's shapes
# and the real model (SmolLM2-135M's shape).
MODEL_NAMES: tuple[str, ...] = (*SHAPES, REAL_MODEL)


class AdvisorError(ValueError):
    """A bad query; the message names every problem and the allowed values."""


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def add_query_options(add: Callable[..., Any]) -> None:
    """The question's options (`parser.add_argument`), for every front end of the advisor."""
    add("--gpu", required=True, metavar="PROFILE", help=f"a GPU profile: {', '.join(PROFILE_NAMES)}")
    add("--model", required=True, metavar="MODEL", help=f"a model: {', '.join(MODEL_NAMES)}")
    add(
        "--batch-size",
        "--batch",
        dest="batch_size",
        type=int,
        required=True,
        metavar="N",
        help="per-device batch",
    )
    add("--seq-len", "--seq", dest="seq_len", type=int, required=True, metavar="N", help="tokens per row")
    add(
        "--grad-accum",
        type=int,
        default=CASE_DEFAULTS["grad_accum"],
        metavar="N",
        help=f"micro-batches per optimizer step (default {CASE_DEFAULTS['grad_accum']})",
    )
    for name in SWITCHES:
        add(
            "--" + name.replace("_", "-"),
            dest=name,
            default=_on_off(CASE_DEFAULTS[name]),
            metavar="on|off",
            help=f"default {_on_off(CASE_DEFAULTS[name])}",
        )
    for name, allowed in CHOICES.items():
        default = "the profile's: fp16 on a T4, else bf16" if name == "compute_dtype" else CASE_DEFAULTS[name]
        add(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None if name == "compute_dtype" else CASE_DEFAULTS[name],
            metavar="|".join(allowed),
            help=f"default {default}",
        )
    add(
        "--runs",
        type=Path,
        nargs="+",
        default=[REFERENCE_DIR],
        metavar="DIR",
        help="run folders (or folders holding them) whose rows the model is fitted to"
        " (default: the committed reference runs)",
    )
    add("--show-held-out", action="store_true", help="also list every held-out row and its error")


def query_case(args: argparse.Namespace) -> tuple[GpuProfile, Case]:
    """The profile and the setting as a Case (trained through the users' engine, Trainer); every
    problem of the query in one AdvisorError, naming the allowed values."""
    problems: list[str] = []
    profile = None
    if args.gpu not in PROFILE_NAMES:
        problems.append(f"--gpu {args.gpu!r}: allowed: {', '.join(PROFILE_NAMES)}")
    else:
        profile = get_profile(args.gpu)
    if args.model not in MODEL_NAMES:
        problems.append(f"--model {args.model!r}: allowed: {', '.join(MODEL_NAMES)}")
    for name in ("batch_size", "seq_len", "grad_accum"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= 1")
    switches = {}
    for name in SWITCHES:
        raw = str(getattr(args, name)).lower()
        if raw not in SWITCH_VALUES:
            problems.append(f"--{name.replace('_', '-')} {getattr(args, name)!r}: allowed: on, off")
        switches[name] = SWITCH_VALUES.get(raw, False)
    for name, allowed in CHOICES.items():
        value = getattr(args, name)
        if value is not None and value not in allowed:
            problems.append(f"--{name.replace('_', '-')} {value!r}: allowed: {', '.join(allowed)}")
    if problems or profile is None:
        raise AdvisorError("; ".join(problems))
    tier = tier_for(profile)
    try:
        case = Case(
            args.model,
            quant_type=args.quant_type,
            double_quant=switches["double_quant"],
            compute_dtype=args.compute_dtype or lesson_dtype(profile),
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            grad_accum=args.grad_accum,
            gradient_checkpointing=switches["gradient_checkpointing"],
            optimizer=args.optimizer,
            lr=LADDER_START_LR,
            engine=USERS_ENGINE,
            # as the matrix's OOM ladder runs (what `tools/measure_fit.py` measures)
            warmup_steps=tier.warmup_steps,
            measured_steps=max(2, tier.measured_steps // 2),
        )
    except CaseError as error:  # a cross-field rule (e.g. fp32 16-bit weights), named by the Case
        raise AdvisorError("; ".join(error.problems)) from None
    return profile, case


def describe(case: Case) -> str:
    """The setting in words, every field the advisor takes."""
    quant = {"none": "16-bit LoRA (no quantization)", "int8": "LoRA over int8 weights"}.get(
        case.quant_type, case.quant_type + (" + double quant" if case.double_quant else "")
    )
    return (
        f"{case.model}, {quant}, {case.compute_dtype} compute, batch {case.batch_size} x grad"
        f" accumulation {case.grad_accum}, seq {case.seq_len}, gradient checkpointing"
        f" {_on_off(case.gradient_checkpointing)}, {case.optimizer}"
    )
