"""Results of a run as pandas: the one DataFrame every report, claim and gate reads.

A run folder holds `results.jsonl` (one Result per line, appended as cases finish; a case rerun
by --resume appends again and the last line for a case hash wins), `environment.json`, and
`measurements/<name>.csv` for in-process measurements that are not training cases (4-bit code
tables, per-layer quantization error, kernel timings).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from qlora_core.result import RESULT_FIELDS, Result

RESULTS_JSONL = "results.jsonl"
ENVIRONMENT_JSON = "environment.json"
MEASUREMENTS_DIR = "measurements"


def results_frame(results: Iterable[Result | dict[str, Any]]) -> pd.DataFrame:
    """One row per result, case fields flattened beside the measurements."""
    rows = [r.row() if isinstance(r, Result) else Result.from_dict(r).row() for r in results]
    if not rows:
        columns = [c for c in RESULT_FIELDS if c != "case"]
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(rows)


def read_results_jsonl(path: Path) -> list[Result]:
    """Results in file order, the last line per case hash (and profile) winning.

    A torn last line (a run killed mid-write) is skipped: every complete line is kept.
    """
    latest: dict[tuple[str, str], Result] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            result = Result.from_dict(json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue
        key = (result.case_hash, result.profile)
        latest.pop(key, None)  # re-insert so the order is that of the latest run
        latest[key] = result
    return list(latest.values())


@dataclass
class RunData:
    """Everything a report needs from one run folder."""

    results: pd.DataFrame
    measurements: dict[str, pd.DataFrame] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None


def load_run(run_dir: Path) -> RunData:
    """Read a run folder back (no GPU, no torch needed)."""
    run_dir = Path(run_dir)
    results = results_frame(read_results_jsonl(run_dir / RESULTS_JSONL))
    env_path = run_dir / ENVIRONMENT_JSON
    environment = json.loads(env_path.read_text()) if env_path.exists() else {}
    measurements = {p.stem: pd.read_csv(p) for p in sorted((run_dir / MEASUREMENTS_DIR).glob("*.csv"))}
    return RunData(results, measurements, environment, run_dir)
