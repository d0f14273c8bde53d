"""The options of every front end that runs cases: `pytest bench` (`qlora_plugin.options`) and
`tools/run_cases.py` (`--case-timeout` also `tools/measure_fit.py`'s).

Each option is declared once (`SHARED_OPTIONS`: flag, metavar, default, help) and added through
`add_shared_options`, which takes argparse's `add_argument` or pytest's `addoption` (the same
keyword arguments); each value is checked by one function here, so a bad value reads the same
under every front end. No pytest, no torch: the tools import this.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from qlora_core.cases.gpus import PROFILE_NAMES, DetectedGpu, GpuProfile, UnknownProfileError, resolve_profile
from qlora_core.process.request import DEFAULT_TIMEOUT_S

AUTO_GPU = "auto"


@dataclass(frozen=True)
class OptionSpec:
    """One option as both front ends declare it."""

    flag: str
    help: str
    """What the option does; `add_shared_options` appends the default ("Default: ...")."""
    default: Any = None
    shown_default: str = ""
    """The default as the help says it ("" for a switch, which is off unless given)."""
    metavar: str | None = None
    type: Callable[[str], Any] | None = None
    action: str | None = None

    def kwargs(self, default: Any, shown_default: str, note: str) -> dict[str, Any]:
        """The keyword arguments of `add_argument` / `addoption` for this option."""
        shown = f"{shown_default} ({note})" if note else shown_default
        given = {"metavar": self.metavar, "type": self.type, "action": self.action}
        return {
            "default": default,
            "help": f"{self.help} Default: {shown}." if shown else self.help,
            **{name: value for name, value in given.items() if value is not None},
        }


GPU = OptionSpec(
    "--gpu",
    f"GPU profile: {', '.join(PROFILE_NAMES)} or {AUTO_GPU} (the GPU present, cpu without one). A"
    " profile smaller than the GPU present is emulated by capping memory.",
    default=None,  # auto; pytest bench on --resume: the folder's (qlora_plugin.resume)
    shown_default=AUTO_GPU,
    metavar="PROFILE",
)
CASE_TIMEOUT = OptionSpec(
    "--case-timeout",
    "seconds before a case's child is killed and recorded as timeout.",
    default=DEFAULT_TIMEOUT_S,
    shown_default=f"{DEFAULT_TIMEOUT_S:g}",
    metavar="SECONDS",
    type=float,
)
REPEAT = OptionSpec(
    "--repeat",
    "run every case N times, each in a fresh process, interleaved across the cases (round 1: every"
    " case, round 2: every case, ...); reports fold the repeats (median tokens/s, its spread and 95%%"
    " interval). The ids of repeats 2.. end in -r2, -r3.",
    default=None,  # 1; pytest bench: a case's own count, on --resume the folder's
    shown_default="1",
    metavar="N",
)
NO_OOM_RERUN = OptionSpec(
    "--no-oom-rerun",
    "do not rerun a case that ran out of memory under an emulated profile's cap uncapped on the host"
    " GPU (by default its row records what it needed: needed_* fields).",
    default=False,
    action="store_true",
)
SHARED_OPTIONS: tuple[OptionSpec, ...] = (GPU, CASE_TIMEOUT, REPEAT, NO_OOM_RERUN)


def add_shared_options(
    add_option: Callable[..., object],
    notes: Mapping[str, str] | None = None,
    defaults: Mapping[str, float | str] | None = None,
    only: tuple[OptionSpec, ...] = SHARED_OPTIONS,
) -> None:
    """Add the options `only` through `add_option` (`add_argument` or `addoption`). `notes`: a
    front end's words after an option's default (flag -> "on --resume: the folder's"); `defaults`:
    a front end's own default for an option (flag -> value), which its help then shows."""
    notes, defaults = notes or {}, defaults or {}
    for spec in only:
        if spec.flag in defaults:
            default = defaults[spec.flag]
            shown = f"{default:g}" if isinstance(default, float) else str(default)
        else:
            default, shown = spec.default, spec.shown_default
        add_option(spec.flag, **spec.kwargs(default, shown, notes.get(spec.flag, "")))


def parse_gpu(requested: str | None) -> tuple[GpuProfile | None, DetectedGpu | None, str]:
    """--gpu's profile and the GPU present (`gpus.resolve_profile`; None: auto), or the problem."""
    try:
        profile, gpu = resolve_profile(requested or AUTO_GPU)
    except UnknownProfileError as exc:
        return None, None, f"--gpu: {exc}"
    return profile, gpu, ""


def case_timeout_problem(timeout_s: float) -> str:
    """The problem with --case-timeout's value ("" when it is usable)."""
    return "" if timeout_s > 0 else f"--case-timeout {timeout_s:g} must be positive"


def parse_repeat(raw: str | None) -> tuple[int | None, str]:
    """--repeat's value as an int >= 1 (None when not given), or the problem with it."""
    if raw is None:
        return None, ""
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1 or str(raw).strip() != str(value):
        return None, f"--repeat {raw!r} must be an integer >= 1 (the fresh-process runs of each case)"
    return value, ""
