"""Noise floors of a single-process speed comparison, by point class, with their evidence.

The floors live in `reports/claims/noise_floors.json`: `python -m reports.claims.noise_floors derive FOLDER...
--write` adds a GPU kind's entry from `--repeat 3` folders, `python -m reports.claims.noise_floors check`
recomputes every stored entry. See docs/gate.md#noise-floors and
docs/gate.md#how-a-noise-floor-is-derived.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from reports.run.folder import RESULTS_JSONL
from reports.run.frame import load_run
from reports.run.rows import fval
from reports.run.stats import cv
from reports.units import pct

FLOORS_JSON = Path(__file__).with_name("noise_floors.json")
REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = 1
Z_95 = 1.959963984540054  # the two-sided 95% quantile of the normal distribution
MIN_PROCESSES = 3
"""Processes a case needs to count as evidence: a CV of two values is one difference."""
_DIGITS = 6  # figures stored rounded, so a recomputation compares equal on every machine

DEVICE_BOUND = "device-bound"
HOST_BOUND = "host-bound"
UNMEASURED = "unmeasured"


class NoiseFloorError(ValueError):
    """An unusable noise-floor file or evidence folder; the message names the problem."""


def point_class(row: pd.Series) -> str:
    """DEVICE_BOUND or HOST_BOUND by the row's measured `host_bound`; UNMEASURED without one."""
    value = row.get("host_bound")
    if value is None or pd.isna(value):
        return UNMEASURED
    return HOST_BOUND if bool(value) else DEVICE_BOUND


@dataclass(frozen=True)
class Floor:
    """The floor a pair of single-process rows gets, and where it comes from, in words."""

    value: float
    point_class: str
    text: str


# -- deriving the floors from reference folders -------------------------------------------------
def _folder_name(folder: Path) -> str:
    """A folder as stored: relative to the repository when inside it, else as given."""
    resolved = folder.resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(folder)


def _case_noise(folder: str, group: pd.DataFrame) -> tuple[str, str, dict[str, Any]] | None:
    """(GPU, class, the case's figures) of one case's processes, or None if it is no evidence."""
    ok = group[group["status"] == "ok"]
    tokens = [fval(r, "tokens_per_s") for _, r in ok.iterrows()]
    if len(ok) < len(group) or len(ok) < MIN_PROCESSES or None in tokens:
        return None
    first = ok.iloc[0]
    if fval(first, "num_gpus") != 1 or str(first.get("extra") or ""):
        return None
    gpus = set(ok["gpu_name"].astype(str))
    classes = {point_class(r) for _, r in ok.iterrows()}
    if len(gpus) != 1 or len(classes) != 1 or classes == {UNMEASURED}:
        return None
    values = [float(t) for t in tokens]  # type: ignore[arg-type]
    figures = {
        "folder": folder,
        "case_id": str(first["case_id"]),
        "processes": len(values),
        "tokens_per_s_cv": round(cv(values) or 0.0, _DIGITS),
        "max_difference": round(max(values) / min(values) - 1, _DIGITS),
    }
    return gpus.pop(), classes.pop(), figures


def _class_entry(cases: list[dict[str, Any]], floor: bool) -> dict[str, Any]:
    """The figures of one class on one GPU; with `floor`, the device-bound floor derived from them."""
    max_cv = max(c["tokens_per_s_cv"] for c in cases)
    max_diff = max(c["max_difference"] for c in cases)
    entry: dict[str, Any] = {"max_cv": max_cv, "max_difference": max_diff}
    if floor:
        value = max(math.sqrt(2) * Z_95 * max_cv, max_diff)
        entry["value"] = math.ceil(round(value * 10_000, 9)) / 10_000  # up to 0.01%
        entry["statistic"] = (
            "max(sqrt(2) x 1.96 x the largest between-process CV of tokens/s, the largest relative"
            f" difference between two processes of one case) over {_counted(cases)}, one GPU,"
            " no test-only knob; rounded up to 0.01%"
        )
    else:
        entry["value"] = None
        entry["statistic"] = (
            f"left out of speed verdicts; between-process figures over {_counted(cases)}, one GPU"
        )
    entry["cases"] = cases
    return entry


def _counted(cases: Sequence[Mapping[str, Any]]) -> str:
    """ "8 cases x 3 processes", or "8 cases, 25 processes" when their counts differ."""
    counts = {int(c["processes"]) for c in cases}
    n = len(cases)
    if len(counts) == 1:
        return f"{n} case{'s' * (n != 1)} x {counts.pop()} processes"
    return f"{n} cases, {sum(int(c['processes']) for c in cases)} processes"


def derive(folders: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """Each GPU kind's entry (as stored in the floors file) from the repeats in `folders`."""
    found: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for folder in folders:
        if not (Path(folder) / RESULTS_JSONL).is_file():
            raise NoiseFloorError(f"{folder}: no {RESULTS_JSONL}; give folders of `--repeat 3` runs")
        repeats = load_run(Path(folder)).repeats
        if repeats is None or repeats.empty:
            continue
        name = _folder_name(Path(folder))
        for _, group in repeats.groupby(["case_hash", "profile"], sort=True):
            noise = _case_noise(name, group)
            if noise is not None:
                gpu, klass, figures = noise
                found.setdefault(gpu, {}).setdefault(klass, []).append(figures)
    out: dict[str, dict[str, Any]] = {}
    for gpu, classes in sorted(found.items()):
        if DEVICE_BOUND not in classes:
            continue  # no floor to derive; host-bound figures alone decide nothing
        # the folders this GPU's evidence came from (a folder without such a case is not one)
        sources = sorted({c["folder"] for cases in classes.values() for c in cases})
        entry: dict[str, Any] = {"sources": sources}
        for klass in (DEVICE_BOUND, HOST_BOUND):
            if klass in classes:
                cases = sorted(classes[klass], key=lambda c: (c["folder"], c["case_id"]))
                entry[klass] = _class_entry(cases, floor=klass == DEVICE_BOUND)
        out[gpu] = entry
    if not out:
        raise NoiseFloorError(
            f"no one-GPU device-bound case with {MIN_PROCESSES}+ ok processes in"
            f" {', '.join(map(str, folders))}: run the speed cases with --repeat 3 on a GPU"
        )
    return out


# -- the stored floors --------------------------------------------------------------------------
@dataclass(frozen=True)
class FloorTable:
    """The floors file, read and checked once."""

    conservative: float
    conservative_why: str
    gpus: dict[str, dict[str, Any]]

    def device_bound(self, gpu: str) -> tuple[float, str] | None:
        """(floor, its evidence in words) measured on `gpu`, None without evidence for it."""
        entry = self.gpus.get(gpu, {}).get(DEVICE_BOUND)
        if entry is None:
            return None
        return float(entry["value"]), f"{_counted(entry['cases'])} on {gpu}"


def read_floors(path: Path = FLOORS_JSON) -> FloorTable:
    """The floors file at `path`; a NoiseFloorError naming what is wrong with it."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NoiseFloorError(f"{path}: cannot read the noise floors ({exc})") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise NoiseFloorError(f"{path}: schema must be {SCHEMA} (got {data.get('schema')!r})")
    conservative = data.get("unmeasured", {})
    value = conservative.get("value")
    if not isinstance(value, (int, float)) or not 0 < value < 1:
        raise NoiseFloorError(f"{path}: unmeasured.value={value!r} must be a fraction in (0, 1)")
    gpus = data.get("gpus", {})
    for gpu, entry in gpus.items():
        floor = entry.get(DEVICE_BOUND, {}).get("value")
        if not isinstance(floor, (int, float)) or not 0 < floor <= value:
            raise NoiseFloorError(
                f"{path}: {gpu} {DEVICE_BOUND}.value={floor!r} must be a fraction in (0, {value}]"
            )
        if not entry[DEVICE_BOUND].get("cases"):
            raise NoiseFloorError(f"{path}: {gpu} {DEVICE_BOUND} names no evidence cases")
    return FloorTable(float(value), str(conservative.get("why", "")), gpus)


@cache
def stored_floors() -> FloorTable:
    """The package's floors file, read once per process."""
    return read_floors(FLOORS_JSON)


def pair_floor(a: pd.Series, b: pd.Series, table: FloorTable | None = None) -> Floor:
    """The floor of a single-process comparison of `a` with `b`: device-bound evidence of their
    GPU where both rows were device-bound, else the conservative floor, each saying why."""
    table = table or stored_floors()
    classes = {point_class(a), point_class(b)}
    conservative = f"±{pct(table.conservative)}"
    if HOST_BOUND in classes:
        return Floor(table.conservative, HOST_BOUND, f"host-bound: conservative floor {conservative}")
    if UNMEASURED in classes:
        text = f"no device-time measurement: conservative floor {conservative}"
        return Floor(table.conservative, UNMEASURED, text)
    gpus = sorted({str(a.get("gpu_name") or ""), str(b.get("gpu_name") or "")})
    if len(gpus) != 1:
        text = f"rows on different GPUs ({', '.join(gpus)}): conservative floor {conservative}"
        return Floor(table.conservative, DEVICE_BOUND, text)
    own = table.device_bound(gpus[0])
    if own is not None:
        value, evidence = own
        return Floor(value, DEVICE_BOUND, f"device-bound floor ±{pct(value)} from {evidence}")
    others = [f for f in (table.device_bound(g) for g in sorted(table.gpus)) if f is not None]
    if not others:
        text = f"no device-bound evidence in {FLOORS_JSON.name}: conservative floor {conservative}"
        return Floor(table.conservative, DEVICE_BOUND, text)
    value, evidence = max(others)  # the widest other GPU's floor: none measured on this one
    note = f" (none measured on {gpus[0] or 'this GPU'}: another GPU's)"
    return Floor(value, DEVICE_BOUND, f"device-bound floor ±{pct(value)} from {evidence}{note}")


# -- the command line ---------------------------------------------------------------------------
def check(path: Path = FLOORS_JSON) -> list[str]:
    """Each stored GPU entry recomputed from its stored sources: the differences, [] if none."""
    table = read_floors(path)
    problems = []
    for gpu, entry in sorted(table.gpus.items()):
        derived = derive([REPO_ROOT / s for s in entry.get("sources", [])]).get(gpu)
        if derived != entry:
            stored_text = _summary(entry)
            recomputed = _summary(derived) if derived else "no evidence"
            if recomputed == stored_text:
                recomputed += " (a case's figures or a statistic differ)"
            problems.append(f"{gpu}: stored {stored_text}; recomputed from its sources: {recomputed}")
    return problems


def _summary(entry: Mapping[str, Any]) -> str:
    floor = entry.get(DEVICE_BOUND, {})
    return f"device-bound floor {floor.get('value')!r} over {_counted(floor.get('cases', []))}"


def write_entries(entries: Mapping[str, dict[str, Any]], path: Path = FLOORS_JSON) -> None:
    """Put (or replace) the GPU kinds' entries in the floors file, the rest kept."""
    data = json.loads(Path(path).read_text())
    data["gpus"] = {**data.get("gpus", {}), **entries}
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m reports.claims.noise_floors", description=summary)
    commands = parser.add_subparsers(dest="command", required=True)
    derive_cmd = commands.add_parser("derive", help="the floors of the GPU kinds in FOLDER... (repeat runs)")
    derive_cmd.add_argument("folders", type=Path, nargs="+", metavar="FOLDER")
    derive_cmd.add_argument("--write", action="store_true", help=f"store them in {FLOORS_JSON.name}")
    commands.add_parser("check", help="recompute every stored floor from its stored folders")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            problems = check()
            print("\n".join(problems) or f"{FLOORS_JSON.name}: every floor recomputes to its stored value")
            return 1 if problems else 0
        entries = derive(args.folders)
        print(json.dumps(entries, indent=2))
        if args.write:
            write_entries(entries)
            print(f"written to {FLOORS_JSON}: {', '.join(entries)}")
        return 0
    except NoiseFloorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
