"""`pytest bench --baseline` refuses every bad baseline before the first case runs: in the option
validation, every problem in one message, in under 5 s of CPU, with no run folder written.
Subprocesses of `pytest bench --gpu cpu --matrix smoke`, as a user runs it (not --collect-only)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from qlora_core.cases.case import Case
from qlora_core.measurement.result import Result
from reports.gate.baseline import make_baseline
from reports.run.frame import results_frame

ROOT = Path(__file__).resolve().parents[1]
PYTEST_BENCH = (
    sys.executable,
    "-m",
    "pytest",
    "bench",
    "-p",
    "no:cacheprovider",
    "--gpu",
    "cpu",
    "--matrix",
    "smoke",
)
REFUSAL_CPU_S = 5.0
"""The refusal's budget, in CPU seconds of the pytest process (interpreter start and imports
included): the machine the tests run on is shared, so its wall time says more about the others."""


def bench(*args: str, out: Path) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run `pytest bench --gpu cpu --matrix smoke ARGS`: the process, its CPU seconds, its wall s."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [*PYTEST_BENCH, "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    wall_s = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, cpu_s, wall_s


def baseline(profile: str = "cpu", matrix: str = "smoke", gpu_name: str = "") -> dict:
    row = Result.for_case(Case("tiny"), profile)
    row.status, row.hardware.gpu_name, row.training.tokens_per_s = "ok", gpu_name, 1000.0
    return make_baseline(results_frame([row]), command="pytest bench", environment={"matrix": matrix})


def write(data: dict) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / "baseline.json"
        path.write_text(json.dumps(data))
        return path

    return make


def random_bytes(tmp: Path) -> Path:
    path = tmp / "baseline.json"
    path.write_bytes(bytes(range(0xD9, 0xFF)) * 40)
    return path


def folder_without_match(tmp: Path) -> Path:
    store = tmp / "baselines"
    store.mkdir()
    (store / "h200-smoke.json").write_text(json.dumps(baseline("h200", gpu_name="NVIDIA H200")))
    return store


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], list[str]]] = {
    "{}": (write({}), ["an empty JSON object ({}), not a qlora-bench baseline"]),
    "random bytes": (random_bytes, ["not a text file (byte 0 is not UTF-8)"]),
    "missing path": (lambda tmp: tmp / "nowhere.json", ["file not found"]),
    "old schema": (write({**baseline(), "schema_version": 1}), ["schema_version is 1, expected 2 to 3"]),
    "newer schema": (write({**baseline(), "schema_version": 7}), ["newer than this qlora-bench reads"]),
    "other profile": (write(baseline("h200")), ["made for profile 'h200', but this run is profile 'cpu'"]),
    "other tier": (write(baseline(matrix="default")), ["tier 'default', but this run is tier 'smoke'"]),
    "folder without a match": (
        folder_without_match,
        [
            "no baseline of this run's profile cpu, tier smoke, GPU cpu",
            "h200-smoke.json: profile h200, tier smoke, GPU NVIDIA H200",
            "pytest bench --gpu cpu --matrix smoke --repeat 3 --save-baseline",
        ],
    ),
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_a_bad_baseline_is_refused_before_the_first_case(tmp_path, kind):
    make, words = BAD_INPUTS[kind]
    path = make(tmp_path)
    out = tmp_path / "out"
    proc, cpu_s, wall_s = bench("--baseline", str(path), out=out)
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr  # pytest's usage error
    assert "qlora-bench options:\n  --baseline: baseline " in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "codec" not in proc.stderr
    assert not out.exists()  # no run folder, nothing written
    assert cpu_s < REFUSAL_CPU_S, (cpu_s, wall_s)


def test_every_problem_is_in_one_message(tmp_path):
    bad = random_bytes(tmp_path)
    proc, _, _ = bench("--baseline", str(bad), "--case-timeout", "0", out=tmp_path / "out")
    assert proc.returncode == 4
    assert "--baseline: baseline" in proc.stderr and "--case-timeout 0 must be positive" in proc.stderr


def test_require_speed_refuses_a_baseline_from_another_gpu_before_the_run(tmp_path):
    path = write(baseline(gpu_name="NVIDIA H200"))(tmp_path)
    proc, _, _ = bench("--baseline", str(path), "--require-speed", out=tmp_path / "out")
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr
    assert "--require-speed: baseline" in proc.stderr
    assert "speed not compared: baseline from NVIDIA H200, run on cpu" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_usable_baseline_passes_the_option_check(tmp_path):
    store = folder_without_match(tmp_path)
    (store / "cpu-smoke-cpu.json").write_text(json.dumps(baseline()))
    proc, _, _ = bench("--baseline", str(store), "--collect-only", "-q", out=tmp_path / "out")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
