"""tools/int8_checkpointing.py: its input is checked, and without a GPU it stops before any model
work, saying why. (What it measures is on the H200: reports/reference/int8-checkpointing; the
mechanism is a CPU test in tests/reports/fit/test_model.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

TOOL = Path(__file__).resolve().parents[2] / "tools" / "int8_checkpointing.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120)


def test_unknown_weights_or_checkpointing_are_refused_naming_the_allowed_values() -> None:
    bad = _run("int4", "reentrant")
    assert bad.returncode == 2 and "choose from 'int8', 'nf4'" in bad.stderr
    bad = _run("int8", "sometimes")
    assert bad.returncode == 2 and "choose from 'reentrant', 'nonreentrant'" in bad.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_it_stops_before_loading_anything() -> None:
    done = _run("int8", "nonreentrant")
    assert done.returncode != 0 and "needs a CUDA GPU" in done.stderr
    assert "Loading" not in done.stderr and done.stdout == ""
