"""Merge run folders (the shards of one matrix, `pytest bench --shard I/N`) into one run folder
(`merge_runs`) that `render`, `baseline` and `gate` read like any single run; refused, before
anything is written, with a `MergeError` naming the cases or folders. See docs/shards.md.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from qlora_core.measurement.result import Result
from reports.run.completeness import INCOMPLETE, PLANNED_RUNS
from reports.run.folder import (
    CASES_DIR,
    MEASUREMENTS_DIR,
    RESULTS_JSONL,
    measurement_paths,
    read_environment,
    read_results_jsonl,
    write_environment,
    write_measurement,
    write_results,
)
from reports.run.frame import check_run_dir, write_result_tables

# environment.json fields that should agree across shards; a difference is flagged.
FLAGGED_FIELDS: tuple[str, ...] = (
    "gpu_present",
    "gpu_capability",
    "driver_version",
    "emulated",
    "python_version",
    "torch_version",
    "cuda_version",
    "transformers_version",
    "peft_version",
    "bitsandbytes_version",
    "accelerate_version",
    "trl_version",
)
SHOWN = 8  # case ids named per refusal; the rest are counted


class MergeError(ValueError):
    """The folders cannot be merged into one truthful run; the message names the cases."""


@dataclass
class MergeReport:
    out: Path
    sources: list[Path]
    cases: int
    runs: int
    missing: list[str] | None = field(default_factory=list)
    """Matrix cases no folder holds; None when no folder recorded its matrix."""
    flags: list[str] = field(default_factory=list)


def _names(ids: list[str]) -> str:
    shown = ", ".join(ids[:SHOWN])
    return shown + (f" (+{len(ids) - SHOWN} more)" if len(ids) > SHOWN else "")


def _check_same_matrix(run_dirs: list[Path], envs: list[dict[str, Any]], rows: list[list[Result]]) -> None:
    for what, key in (("profiles", "profile"), ("tiers", "matrix")):
        values: dict[str, Any] = {str(d): env.get(key) for d, env in zip(run_dirs, envs)}
        if key == "profile":  # the rows name their profile too; a folder of mixed ones is refused
            for d, results in zip(run_dirs, rows):
                names = {r.profile for r in results} | ({values[str(d)]} if values[str(d)] else set())
                values[str(d)] = ", ".join(sorted(names))
        if len(set(values.values())) > 1:
            listed = "; ".join(f"{d}: {v}" for d, v in values.items())
            raise MergeError(f"shards of different {what} cannot be merged into one run ({listed})")
    matrices = {tuple(sorted(env.get("matrix_case_ids") or ())) for env in envs if env.get("matrix_case_ids")}
    if len(matrices) > 1:
        raise MergeError(
            "the shards planned different matrices (another --model set or code version):"
            " run every shard with the same options and code"
        )


def _union_rows(run_dirs: list[Path], rows: list[list[Result]]) -> list[Result]:
    """Every shard's rows, each (case hash, repeat) once; MergeError on rows that differ."""
    kept: dict[tuple[str, int], tuple[Path, Result]] = {}
    conflicts: list[str] = []
    for run_dir, results in zip(run_dirs, rows):
        for result in results:
            key = (result.case_hash, result.repeat)
            if key not in kept:
                kept[key] = (run_dir, result)
            elif kept[key][1].to_json() != result.to_json():
                first, other = kept[key]
                conflicts.append(
                    f"{result.case_id} repeat {result.repeat} ({first}: {other.status} started"
                    f" {other.started_at}; {run_dir}: {result.status} started {result.started_at})"
                )
    if conflicts:
        raise MergeError(
            f"{len(conflicts)} case(s) have different results in two folders; a case belongs to one"
            f" shard (rerun it in one and drop it from the other): {_names(conflicts)}"
        )
    return [result for _, result in kept.values()]


def _missing(envs: list[dict[str, Any]], results: list[Result], partial: bool) -> list[str] | None:
    """Matrix cases no shard ran (in matrix order; None: no folder records its matrix); MergeError
    unless `partial`."""
    planned = next((env["matrix_case_ids"] for env in envs if env.get("matrix_case_ids")), None)
    if planned is None:
        if partial:
            return None
        raise MergeError(
            "no folder records its matrix (environment.json has no matrix_case_ids: a run made"
            " before --shard existed), so missing cases cannot be told; --partial merges anyway"
        )
    present = {r.case_id for r in results}
    missing = [case_id for case_id in planned if case_id not in present]
    if missing and not partial:
        raise MergeError(
            f"{len(missing)} case(s) of the matrix are in no folder: {_names(missing)}. Merge every"
            " shard's folder, or pass --partial to merge what there is (claims.md will say so)"
        )
    return missing


def _flags(run_dirs: list[Path], envs: list[dict[str, Any]]) -> list[str]:
    flags = []
    for name in FLAGGED_FIELDS:
        values = {str(d): env.get(name) for d, env in zip(run_dirs, envs) if name in env}
        if len(set(map(str, values.values()))) > 1:
            flags.append(
                f"{name} differs across shards: " + "; ".join(f"{d}: {v}" for d, v in values.items())
            )
    return flags


def _join_files(run_dirs: list[Path], out: Path) -> None:
    """cases/ copied (a file two folders share is the same row's, already checked); measurements
    concatenated per name, repeated rows once."""
    (out / CASES_DIR).mkdir(parents=True, exist_ok=True)
    for run_dir in run_dirs:
        for path in sorted((run_dir / CASES_DIR).glob("*")):
            if path.is_file() and not (out / CASES_DIR / path.name).exists():
                shutil.copy2(path, out / CASES_DIR / path.name)
    tables: dict[str, list[pd.DataFrame]] = {}
    for run_dir in run_dirs:
        for path in measurement_paths(run_dir):
            tables.setdefault(path.stem, []).append(pd.read_csv(path))
    if tables:
        (out / MEASUREMENTS_DIR).mkdir(exist_ok=True)
    for name, frames in tables.items():
        joined = pd.concat(frames, ignore_index=True).drop_duplicates(ignore_index=True)
        write_measurement(out, name, joined.to_csv(index=False))


def merge_runs(run_dirs: list[Path], out: Path, *, partial: bool = False, command: str = "") -> MergeReport:
    """Merge `run_dirs` into the new folder `out` (see the module docstring); MergeError or
    RunFolderError before anything is written when they cannot be merged."""
    run_dirs = [check_run_dir(d) for d in run_dirs]
    out = Path(out)
    if not run_dirs:
        raise MergeError("no run folders to merge")
    if len({d.resolve() for d in run_dirs}) < len(run_dirs):
        raise MergeError("a run folder is given twice: " + ", ".join(map(str, run_dirs)))
    if out.exists() and any(out.iterdir()):
        raise MergeError(f"--out {out} exists and is not empty: merge into a new folder")
    envs = [read_environment(d) for d in run_dirs]
    rows = [read_results_jsonl(d / RESULTS_JSONL) for d in run_dirs]
    _check_same_matrix(run_dirs, envs, rows)
    results = _union_rows(run_dirs, rows)
    missing = _missing(envs, results, partial)
    flags = _flags(run_dirs, envs)

    # In the order an unsharded session writes them: round by round, matrix order within a round
    # (reports list evidence in row order); cases outside the recorded matrix after, as found.
    matrix_ids: list[str] = next((e["matrix_case_ids"] for e in envs if e.get("matrix_case_ids")), [])
    position = {case_id: k for k, case_id in enumerate(matrix_ids)}
    results.sort(key=lambda r: (r.repeat, position.get(r.case_id, len(position))))
    out.mkdir(parents=True, exist_ok=True)
    write_results(out, results)
    _join_files(run_dirs, out)
    commands = [c for env in envs for c in (env.get("commands") or [env.get("command", "")]) if c]
    environment = {
        # A shard's plan and what it lacked are its own (under `shards`); the merge's are `merge`.
        **{k: v for k, v in envs[0].items() if k not in (PLANNED_RUNS, INCOMPLETE)},
        "shard": None,
        "matrix_case_ids": matrix_ids,
        "command": command,
        "commands": [*commands, command] if command else commands,
        "cases": len({r.case_hash for r in results}),
        "runs": len(results),
        "shards": [{"run_dir": str(d), **env} for d, env in zip(run_dirs, envs)],
        "merge": {
            "sources": [str(d) for d in run_dirs],
            "partial": partial,
            "missing_case_ids": missing,
            "flags": flags,
        },
    }
    write_environment(out, environment)
    _, problems = write_result_tables(out)
    return MergeReport(out, run_dirs, environment["cases"], len(results), missing, [*flags, *problems])


def merge_notes(environment: dict[str, Any]) -> list[str]:
    """What a report must say about a merged folder: a partial merge's missing cases and the
    differences between shards (empty for a run that is not a merge)."""
    merge = environment.get("merge") or {}
    notes = []
    if merge.get("partial"):
        missing = merge.get("missing_case_ids")
        if missing is None:
            told = "the folders record no matrix, so missing cases cannot be told"
        elif missing:
            told = f"{len(missing)} case(s) of the matrix missing: {_names(list(missing))}"
        else:
            told = "no case of the matrix is missing"
        notes.append(f"**Partial merge** of {len(merge.get('sources', []))} folders (--partial): {told}.")
    notes += [f"**Flag**: {flag}." for flag in merge.get("flags") or []]
    return notes
