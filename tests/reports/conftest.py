"""Fixtures of the report tests: `build` (the row and run builders of tests/reports/report_builders.py),
the synthetic T4 run (tests/reports/synthetic_t4.py) as `synthetic_run` and as a run folder,
`synthetic_run_dir`."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from reports.run.frame import RunData
from tests.reports.report_builders import (
    FP4_CODES,
    NF4_CODES,
    SHAPES,
    gpu,
    in_processes,
    make_result,
    make_run,
    memory,
    needed,
    params,
    pick,
    quant_codes_rows,
    quant_error_rows,
    quant_state_rows,
    stability_row,
    training,
    verdicts,
    weights,
    write_run_dir,
)
from tests.reports.synthetic_t4 import synthetic_environment, synthetic_measurements, synthetic_results


@pytest.fixture
def build() -> SimpleNamespace:
    """The row and run builders of report_builders.py (and the synthetic run), for tests."""
    return SimpleNamespace(
        result=make_result,
        run=make_run,
        weights=weights,
        params=params,
        gpu=gpu,
        memory=memory,
        needed=needed,
        training=training,
        in_processes=in_processes,
        stability=stability_row,
        quant_codes=quant_codes_rows,
        quant_state=quant_state_rows,
        quant_error=quant_error_rows,
        synthetic_results=synthetic_results,
        synthetic_measurements=synthetic_measurements,
        synthetic_environment=synthetic_environment,
        write_run_dir=write_run_dir,
        shapes=SHAPES,
        nf4_codes=NF4_CODES,
        fp4_codes=FP4_CODES,
        pick=pick,
        verdicts=verdicts,
    )


@pytest.fixture
def synthetic_run() -> RunData:
    """The synthetic T4 run as RunData."""
    return make_run(synthetic_results(), synthetic_measurements(), synthetic_environment())


@pytest.fixture
def synthetic_run_dir(tmp_path: Path) -> Path:
    """The synthetic T4 run written as a run folder."""
    return write_run_dir(
        tmp_path / "t4-default-run", synthetic_results(), synthetic_measurements(), synthetic_environment()
    )
