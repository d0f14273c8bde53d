"""Results of a run as pandas: the one DataFrame every report, claim and gate reads, typed once
from the `Result` and `Case` annotations. `RunData.results` holds one row per case (repeats
folded, `reports.run.repeats`), `RunData.repeats` every repeat's own row.
See docs/usage.md#the-results-frame.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from qlora_core.cases.case import Case
from qlora_core.measurement.result import RESULT_FIELD_TYPES, Result
from reports.run.folder import (
    RESULTS_CSV,
    RESULTS_JSONL,
    RESULTS_PARQUET,
    measurement_paths,
    migrate_result_row,
    read_environment,
    read_results,
    write_table_file,
)
from reports.run.repeats import RepeatStats, fold_repeats

_LIST_COLUMNS = ("step_ms", "losses", "grad_norms", "tokens_per_s_repeats", "kernel_ms_repeats")
MATRIX_NOTES = "matrix_notes"
"""environment.json's list of what the host left out of the matrix and why (`tiers.cpu_text_note`)."""


class RunFolderError(FileNotFoundError):
    """The folder is missing or holds no results.jsonl."""


def check_run_dir(run_dir: Path) -> Path:
    """`run_dir` as a Path when it is a run folder; RunFolderError saying what is wrong otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist (or is not a folder)")
    if not (run_dir / RESULTS_JSONL).is_file():
        raise RunFolderError(f"{run_dir} has no {RESULTS_JSONL}: not a qlora-bench run folder")
    return run_dir


def column_dtype(annotation: Any) -> str | None:
    """The pandas dtype of a column holding a field annotated `annotation`; None for lists and
    dicts (kept as Python objects). Tuples are text: `Result.row()` joins them with commas."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]  # `X | None`: the nullable dtypes below hold the None
    if typing.get_origin(annotation) is typing.Literal:
        annotation = type(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) is tuple:
        return "str"
    return {bool: "boolean", int: "Int64", float: "float64", str: "str"}.get(annotation)


def _column_dtypes() -> dict[str, str | None]:
    """Column -> dtype for every column of a results frame, in `Result.row()` order."""
    case_hints = typing.get_type_hints(Case)
    columns = {name: column_dtype(hint) for name, hint in RESULT_FIELD_TYPES.items() if name != "case"}
    for f in dataclasses.fields(Case):
        columns.setdefault(f.name, column_dtype(case_hints[f.name]))
    repeat_hints = typing.get_type_hints(RepeatStats)
    for f in dataclasses.fields(RepeatStats):
        columns[f.name] = column_dtype(repeat_hints[f.name])
    return columns


COLUMN_DTYPES: dict[str, str | None] = _column_dtypes()
"""Every column of a results frame and its dtype (None: Python objects), from the field types."""


def results_frame(results: Iterable[Result | dict[str, Any]]) -> pd.DataFrame:
    """One row per case, its repeats folded (`reports.run.repeats`), case fields flattened beside the
    measurements, every column present (an empty run included) and cast to its field's type."""
    return _typed_frame(fold_repeats(_as_results(results)))


def repeats_frame(results: Iterable[Result | dict[str, Any]]) -> pd.DataFrame:
    """One row per result as stored (every repeat its own row), typed like `results_frame`."""
    return _typed_frame([r.row() for r in _as_results(results)])


def _as_results(results: Iterable[Result | dict[str, Any]]) -> list[Result]:
    """Results as given, and dicts of stored rows migrated to this schema (`reports.run.folder`)."""
    return [r if isinstance(r, Result) else Result.from_dict(migrate_result_row(r)) for r in results]


def _typed_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(COLUMN_DTYPES))
    missing = [c for c in COLUMN_DTYPES if c not in frame.columns]
    if missing:
        frame = frame.assign(**{c: None for c in missing})
    return frame.astype({c: t for c, t in COLUMN_DTYPES.items() if t is not None})


@dataclass
class RunData:
    """Everything a report needs from one run folder."""

    results: pd.DataFrame
    """One row per case, repeats folded."""
    measurements: dict[str, pd.DataFrame] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    repeats: pd.DataFrame | None = None
    """Every repeat's own row (None when the RunData was built from folded rows only)."""
    notes: list[str] = field(default_factory=list)
    """The lines of results.jsonl that were not read, and why (`run_folder.read_results`)."""

    def value(self, env_key: str, column: str | None = None) -> str:
        """A run-level value: environment.json first, then the first non-empty result column
        (`column`, default `env_key`); "" when neither has one."""
        value = self.environment.get(env_key)
        if value not in (None, ""):
            return str(value)
        column = column or env_key
        if column in self.results.columns:
            values = [str(v) for v in self.results[column] if v not in (None, "") and not pd.isna(v)]
            if values:
                return values[0]
        return ""


def load_run(run_dir: Path) -> RunData:
    """Read a run folder back (no GPU, no torch needed)."""
    run_dir = Path(run_dir)
    stored = read_results(run_dir / RESULTS_JSONL)
    measurements = {p.stem: pd.read_csv(p) for p in measurement_paths(run_dir)}
    return RunData(
        results_frame(stored.results),
        measurements,
        read_environment(run_dir),
        run_dir,
        repeats_frame(stored.results),
        stored.notes,
    )


def write_result_tables(run_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """Write results.csv and results.parquet (one row per case, repeats folded) from the folder's
    results.jsonl; the paths written by format, and why an optional format was not written."""

    run_dir = Path(run_dir)
    frame = load_run(run_dir).results
    csv = frame.copy()
    for col in _LIST_COLUMNS:
        if col in csv:
            csv[col] = csv[col].map(json.dumps)
    write_table_file(run_dir, RESULTS_CSV, csv.to_csv(index=False))
    paths = {"jsonl": run_dir / RESULTS_JSONL, "csv": run_dir / RESULTS_CSV}
    problems = []
    try:
        frame.to_parquet(run_dir / RESULTS_PARQUET, index=False)
        paths["parquet"] = run_dir / RESULTS_PARQUET
    except (ImportError, ValueError) as exc:  # never lose the run over an optional format
        problems.append(f"{RESULTS_PARQUET} not written: {exc}")
    return paths, problems
