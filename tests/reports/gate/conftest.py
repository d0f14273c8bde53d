"""The gate tests' saved baseline: the clean run of `gate_cases` as `baselines/t4.json`."""

from __future__ import annotations

from pathlib import Path

import pytest

from reports.gate.baseline import save_baseline
from reports.run.frame import results_frame
from tests.reports.gate.gate_cases import COMMAND, ENVIRONMENT, clean_results


@pytest.fixture
def baseline_path(tmp_path: Path) -> Path:
    path = tmp_path / "baselines" / "t4.json"
    save_baseline(path, results_frame(clean_results()), command=COMMAND, environment=ENVIRONMENT)
    return path
