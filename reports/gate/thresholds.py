"""Release-gate thresholds: how far a metric may move before the gate fails.

`Thresholds` is the one source of each threshold's name, default, unit and meaning. Everything
else is generated from its fields: the `--<name>` options of `pytest bench` and of
`python -m reports gate` (`add_threshold_options`), the keys a `[tool.qlora-bench]` table may
hold, and the help text. Precedence, lowest first: the defaults here, then an optional
`[tool.qlora-bench]` table in a pyproject.toml (the one pytest's rootdir holds, or the CLI's
`--pyproject`; an installed package has none and needs none), then the command line.

No pandas and no torch here: the plugin reads these while it validates its options.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the package allows 3.10, where tomli is the same parser
    import tomli as tomllib

PYPROJECT_TABLE = "qlora-bench"
# How a unit is written as an option's metavar.
_METAVARS = {"%": "PCT", "MiB": "MIB", "p": "ALPHA"}


def _threshold(default: float, unit: str, meaning: str) -> Any:
    """A Thresholds field: its default, its unit (one of _METAVARS) and what it means."""
    if unit not in _METAVARS:
        raise ValueError(f"unit {unit!r} is not one of {list(_METAVARS)}")
    return dataclasses.field(default=default, metadata={"unit": unit, "meaning": meaning})


@dataclass(frozen=True)
class Thresholds:
    """How much a metric may move before the gate fails (the rules: reports/gate/verdict.py)."""

    tokens_per_s_drop_pct: float = _threshold(
        default=7.0,
        unit="%",
        meaning="the minimum effect: tokens/s fails only when its median drops by more than this"
        " many percent and the drop is significant over the repeats (see speed_alpha); a case"
        " whose 95% interval is wider than twice this is too noisy to gate.",
    )
    memory_rise_pct: float = _threshold(
        default=3.0,
        unit="%",
        meaning="each memory metric may rise by this many percent of the baseline, or by"
        " memory_rise_min_mib, whichever is larger.",
    )
    memory_rise_min_mib: float = _threshold(
        default=64.0,
        unit="MiB",
        meaning="each memory metric may always rise by this many MiB (small values are noisy).",
    )
    final_loss_rise_pct: float = _threshold(
        default=2.0,
        unit="%",
        meaning="final_loss may rise by this many percent of |baseline|.",
    )

    kernel_ms_rise_pct: float = _threshold(
        default=3.0,
        unit="%",
        meaning="GPU kernel time per step may rise by this many percent (device time is stable"
        " across processes; host-bound cases are gated on it alone).",
    )
    speed_alpha: float = _threshold(
        default=0.05,
        unit="p",
        meaning="a tokens/s drop is significant when the one-sided Mann-Whitney U p-value over"
        " the repeats (3 or more on each side) is below this.",
    )

    def __post_init__(self) -> None:
        problems = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not is_number or not math.isfinite(value) or value < 0:
                problems.append(f"{f.name}={value!r} must be a finite number >= 0")
            elif f.metadata["unit"] == "p" and not 0 < value <= 1:
                problems.append(f"{f.name}={value!r} must be a probability in (0, 1]")
        if problems:
            raise ValueError("invalid thresholds: " + "; ".join(problems))

    @classmethod
    def allowed_keys(cls) -> tuple[str, ...]:
        """The threshold names, as pyproject keys and `with_overrides` arguments."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_pyproject(cls, path: Path) -> Thresholds:
        """The defaults, overridden by `[tool.qlora-bench]` of `path` where the file has that table."""
        path = Path(path)
        if not path.is_file():
            return cls()
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: invalid TOML: {e}") from e
        table = data.get("tool", {}).get(PYPROJECT_TABLE)
        if table is None:
            return cls()
        if not isinstance(table, dict):
            raise ValueError(f"{path}: [tool.{PYPROJECT_TABLE}] must be a table")
        unknown = sorted(set(table) - set(cls.allowed_keys()))
        if unknown:
            raise ValueError(
                f"{path}: unknown key(s) {unknown} in [tool.{PYPROJECT_TABLE}]; "
                f"allowed keys: {list(cls.allowed_keys())}"
            )
        # TOML integers (`= 10`) are thresholds too; bools and strings fail validation below.
        values = {k: float(v) if type(v) is int else v for k, v in table.items()}
        try:
            return cls(**values)
        except ValueError as e:
            raise ValueError(f"{path}: [tool.{PYPROJECT_TABLE}]: {e}") from e

    def with_overrides(self, **overrides: float | None) -> Thresholds:
        """A copy with the given thresholds replaced; None values (an option not given) are ignored."""
        unknown = sorted(set(overrides) - set(self.allowed_keys()))
        if unknown:
            raise ValueError(f"unknown threshold(s) {unknown}; allowed: {list(self.allowed_keys())}")
        changes = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **changes)


class ThresholdOption(NamedTuple):
    """One threshold as a command-line option, derived from its Thresholds field."""

    name: str  # the field name, also the option's dest
    flag: str  # "--tokens-per-s-drop-pct"
    metavar: str
    help: str


def threshold_options() -> tuple[ThresholdOption, ...]:
    """Every threshold as a command-line option, in field order."""
    options = []
    for f in dataclasses.fields(Thresholds):
        unit = f.metadata["unit"]
        default = f"{f.default:g}" + {"%": "%", "MiB": " MiB", "p": ""}[unit]
        text = (
            f"gate threshold: {f.metadata['meaning']} Default: {default} (a"
            f" [tool.{PYPROJECT_TABLE}] table in pyproject.toml may change it)."
        )
        options.append(ThresholdOption(f.name, "--" + f.name.replace("_", "-"), _METAVARS[unit], text))
    return tuple(options)


ALLOW_NOISY_FLAG = "--allow-noisy"
ALLOW_NOISY_HELP = (
    "gate: list the cases too noisy to gate (95% interval wider than twice"
    " tokens_per_s_drop_pct) instead of failing on them. Default: they fail the gate."
)


REQUIRE_SPEED_FLAG = "--require-speed"
REQUIRE_SPEED_HELP = (
    "gate: fail when this run's speed (tokens/s, kernel time) cannot be compared with the"
    " baseline's, because the baseline was measured on another GPU kind. Default: speed is then"
    " reported as not compared, and memory, statuses and losses are gated alone."
)


def add_threshold_options(add_option: Callable[..., object]) -> None:
    """Add every threshold option, --allow-noisy and --require-speed through `add_option`:
    argparse's `add_argument` or pytest's `addoption` (same signature). A threshold option not
    given reads as None, so it overrides nothing."""
    add_option(
        ALLOW_NOISY_FLAG,
        dest="allow_noisy",
        action="store_true",
        default=False,
        help=ALLOW_NOISY_HELP.replace("%", "%%"),
    )
    add_option(
        REQUIRE_SPEED_FLAG,
        dest="require_speed",
        action="store_true",
        default=False,
        help=REQUIRE_SPEED_HELP,
    )
    for option in threshold_options():
        add_option(
            option.flag,
            dest=option.name,
            type=float,
            default=None,
            metavar=option.metavar,
            help=option.help.replace("%", "%%"),  # argparse %-formats help texts
        )


def resolve_thresholds(pyproject: Path | None, given: Callable[[str], float | None]) -> Thresholds:
    """The thresholds a gate uses: defaults < `pyproject`'s table (if any) < options given.

    `given(name)` returns the value of the option for threshold `name`, or None when it was not
    given (`config.getoption` for pytest, `getattr(args, ...)` for argparse). Raises ValueError
    naming every invalid value.
    """
    base = Thresholds.from_pyproject(pyproject) if pyproject is not None else Thresholds()
    return base.with_overrides(**{name: given(name) for name in Thresholds.allowed_keys()})
