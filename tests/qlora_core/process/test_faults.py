"""Faults in the child and the parent: each is recorded with the right status and reason, keeps
what was measured before it, and a rerun of the same case (what --resume does for a status
outside FINAL_STATUSES) gives the row of an uninterrupted run.

Faults are injected one-shot through `RunOptions.inject_fault`, so the very case that faulted
reruns clean. Everything runs the tiny shape for two steps on the CPU; the CUDA device-side
assert and the real GPU OOM carry the `gpu` marker.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from qlora_core.cases.case import Case, CaseError
from qlora_core.measurement.result import FINAL_STATUSES, Result, read_result
from qlora_core.process import faults
from qlora_core.process.faults import FAULT_KINDS, Fault, parse_fault
from qlora_core.process.request import RunOptions
from qlora_core.process.runner import run_case
from qlora_core.process.stages import STAGES

REPO_ROOT = Path(__file__).resolve().parents[3]
CASE = Case("tiny", seq_len=32, warmup_steps=0, measured_steps=2)
CPU = RunOptions(profile="cpu", timeout_s=300)
HANG_TIMEOUT_S = 45
# Fields that differ between two runs of one case by nature: clocks, and on the CPU the
# process's RSS (what the stage memory fields hold there). Everything else must be equal.
NOISE_FIELDS = frozenset(
    {"started_at", "finished_at", "wall_s", "load_s", "step_ms", "step_ms_median", "step_ms_spread"}
    | {"tokens_per_s", "cpu_peak_rss_gib", "nvml_base_gib", "nvml_peak_gib"}
    | {f"{stage}_{kind}_gib" for stage in ("load", "prepare", "lora") for kind in ("alloc", "reserved")}
    | {"peak_alloc_gib", "peak_reserved_gib"}
    | {"start_s", "import_s", "prepare_s", "warmup_s", "train_s", "profile_s", "eval_s", "step_ms_rel_iqr"}
    # Device time: kernel durations and launch counts move a little between processes (seen on
    # the H200: 1.3854 vs 1.3854 ms, gpu_busy 0.045 vs 0.038 for a host-bound tiny step).
    | {"kernel_ms_per_step", "kernels_per_step", "gpu_busy", "host_bound", "mfu", "mfu_kernel"}
    | {"comm_ms_per_step"}
)


def comparable(result: Result) -> dict[str, Any]:
    """The row without the fields that differ between two runs of the same case."""
    return {k: v for k, v in result.flat().items() if k not in NOISE_FIELDS}


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Result:
    """CASE run without any fault: the row every rerun must reproduce."""
    result = run_case(CASE, CPU, tmp_path_factory.mktemp("clean") / "r.json")
    assert result.status == "ok", result.reason
    return result


def assert_rerun_matches(clean: Result, path: Path, options: RunOptions = CPU) -> None:
    again = run_case(CASE, options, path)
    assert comparable(again) == comparable(clean)
    assert read_result(path).status == "ok"  # the file on disk is the clean row now


# -- parsing -------------------------------------------------------------------------------------
def test_parse_fault():
    assert parse_fault("") is None
    assert parse_fault("sigkill@training") == Fault("sigkill", "training")
    assert str(parse_fault("hang@perplexity before training")) == "hang@perplexity before training"


@pytest.mark.parametrize("spec", ["boom@training", "sigkill@nowhere", "sigkill", "@"])
def test_bad_fault_lists_allowed_values(spec: str):
    with pytest.raises(CaseError) as info:
        parse_fault(spec)
    message = str(info.value)
    assert repr(spec) in message
    assert all(kind in message for kind in FAULT_KINDS) or all(stage in message for stage in STAGES)


def test_run_case_refuses_bad_faults_before_starting_a_child(tmp_path: Path):
    path = tmp_path / "r.json"
    with pytest.raises(CaseError, match="needs a GPU profile"):
        run_case(CASE, dataclasses.replace(CPU, inject_fault="cuda-assert@training"), path)
    with pytest.raises(CaseError, match="fault kind"):
        run_case(CASE, dataclasses.replace(CPU, inject_fault="boom@load"), path)
    assert not path.exists()


def test_rows_compare_equal_only_when_they_are(clean: Result):
    """The comparison used below can fail: a changed measurement or status is seen."""
    other = clean.replaced(losses=[*clean.training.losses[:-1], clean.training.losses[-1] + 1e-3])
    assert comparable(other) != comparable(clean)
    assert comparable(clean.replaced(status="crashed")) != comparable(clean)
    assert comparable(clean.replaced(wall_s=1e6)) == comparable(clean)


# -- faults in the child, then a rerun -------------------------------------------------------------
# (fault, status, words in the reason, a field measured before the fault that must be kept,
#  words in the traceback: "" where the child died without an exception)
CHILD_FAULTS = [
    ("sigkill@training", "crashed", "child killed by SIGKILL", "trainable_params", ""),
    ("sigsegv@LoRA", "crashed", "child killed by SIGSEGV", "prepare_alloc_gib", ""),
    ("exit@prepare", "crashed", "child exited with code 3", "weight_bytes", ""),
    # A bug in our code (a KeyError): crashed, not config_error, with its traceback in the row.
    ("error@data", "crashed", "KeyError", "trainable_bytes", "qlora_core/process/faults.py"),
]


@pytest.mark.parametrize(("fault", "status", "words", "kept", "in_traceback"), CHILD_FAULTS)
def test_child_fault_is_recorded_then_rerun_clean(
    clean: Result, tmp_path: Path, fault: str, status: str, words: str, kept: str, in_traceback: str
):
    path = tmp_path / "r.json"
    result = run_case(CASE, dataclasses.replace(CPU, inject_fault=fault), path)
    assert result.status == status, result.reason
    stage = fault.split("@")[1]
    assert result.reason.startswith(stage) or result.reason.startswith(f"died during {stage}")
    assert f"injected fault {fault}" in result.reason and words in result.reason
    if in_traceback:
        assert result.traceback.startswith("Traceback (most recent call last)")
        assert in_traceback in result.traceback
    else:
        assert result.traceback == ""
    assert result.get_field(kept) is not None
    if kept not in NOISE_FIELDS:
        assert result.get_field(kept) == clean.get_field(kept)
    assert (
        result.environment.torch_version == clean.environment.torch_version
    )  # the environment is recorded before any stage
    assert read_result(path).status == status
    assert status not in FINAL_STATUSES  # so --resume reruns it:
    assert_rerun_matches(clean, path)


def test_oom_is_final_and_keeps_what_was_measured(clean: Result, tmp_path: Path):
    result = run_case(CASE, dataclasses.replace(CPU, inject_fault="oom@training"), tmp_path / "r.json")
    assert result.status == "oom", result.reason
    assert "OutOfMemoryError" in result.reason and "injected fault oom@training" in result.reason
    assert "OutOfMemoryError" in result.traceback
    assert result.weights.trainable_params == clean.weights.trainable_params
    assert result.weights.weight_bytes == clean.weights.weight_bytes
    # An OOM is a fact about the case on this GPU: --resume keeps it rather than rerunning.
    assert result.status in FINAL_STATUSES


def test_hang_past_the_timeout_is_killed_then_rerun_clean(clean: Result, tmp_path: Path):
    path = tmp_path / "r.json"
    options = RunOptions(profile="cpu", timeout_s=HANG_TIMEOUT_S, inject_fault="hang@prepare")
    result = run_case(CASE, options, path)
    assert result.status == "timeout"
    assert f"no result after {HANG_TIMEOUT_S} s (in prepare (injected fault hang@prepare))" in result.reason
    assert result.weights.weight_bytes == clean.weights.weight_bytes  # measured before the hang, kept
    assert HANG_TIMEOUT_S <= result.timing.wall_s < HANG_TIMEOUT_S + 15
    # where it hung, in its log: every thread's stack, the main one in the hang (faults.fire)
    log = path.with_suffix(".log").read_text()
    assert "stacks are in its log" in result.reason
    assert "Current thread" in log and "qlora_core/process/faults.py" in log, log[-2000:]
    assert "timeout" not in FINAL_STATUSES
    assert_rerun_matches(clean, path)


def test_case_extra_fault_fires_on_every_run(tmp_path: Path):
    """The persistent injection: part of the case's identity, so it cannot hide in a matrix."""
    case = CASE.replace(extra=(("fault", "exit@prepare"),))
    assert case.id != CASE.id and "exit@prepare" in case.id
    result = run_case(case, CPU, tmp_path / "r.json")
    assert result.status == "crashed" and "exited with code 3" in result.reason
    assert "injected fault exit@prepare" in result.reason


# -- the parent interrupted mid-case -------------------------------------------------------------
PARENT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from qlora_core.process.request import RunOptions
    from qlora_core.process.runner import run_case
    from qlora_core.cases.case import Case

    case = Case("tiny", seq_len=32, warmup_steps=0, measured_steps=2)
    run_case(case, RunOptions(profile="cpu", timeout_s=600, inject_fault="hang@training"), Path(sys.argv[1]))
    """
)


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_parent_interrupted_mid_case_leaves_no_child_and_reruns_clean(
    clean: Result, tmp_path: Path, how: signal.Signals
):
    path = tmp_path / "r.json"
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(path)],
        env={**os.environ, "PYTHONPATH": pythonpath},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(
            lambda: path.exists() and "died during training" in path.read_text(), 240, "training to start"
        )
        children = psutil.Process(parent.pid).children(recursive=True)
        assert children, "the case's child is running"
        parent.send_signal(how)
        output, _ = parent.communicate(timeout=60)
    finally:
        if parent.poll() is None:
            parent.kill()
    if how == signal.SIGINT:
        assert "KeyboardInterrupt" in output  # the parent killed the child's group, then re-raised
    _wait_for(lambda: not any(c.is_running() and c.status() != "zombie" for c in children), 10, "no child")
    row = read_result(path)  # what the child had written: crashed, so --resume reruns the case
    assert row.status == "crashed" and row.weights.trainable_params == clean.weights.trainable_params
    assert_rerun_matches(clean, path)


# -- on the GPU ----------------------------------------------------------------------------------
@pytest.mark.gpu
def test_device_side_assert_is_cuda_error_then_rerun_clean(gpu_required, tmp_path: Path):
    path = tmp_path / "r.json"
    # A fixed number of measured steps: adaptive measuring could stop the two runs at different
    # steps, and the losses (every step) would differ in length for that reason alone.
    gpu = RunOptions(profile="h200", timeout_s=600, adaptive_steps=False)
    first = run_case(CASE, dataclasses.replace(gpu, inject_fault="cuda-assert@training"), path)
    assert first.status == "cuda_error", first.reason
    assert "device-side assert" in first.reason and "injected fault cuda-assert@training" in first.reason
    assert first.weights.trainable_params is not None and first.memory.lora_alloc_gib is not None
    assert "cuda_error" not in FINAL_STATUSES
    clean_gpu = run_case(CASE, gpu, tmp_path / "clean.json")
    assert clean_gpu.status == "ok", clean_gpu.reason
    again = run_case(CASE, gpu, path)
    assert comparable(again) == comparable(clean_gpu)


def test_a_rank_selector_picks_the_one_rank_that_fires():
    assert str(parse_fault("sigkill@training@rank1")) == "sigkill@training@rank1"
    assert parse_fault("sigkill@training@rank1").rank == 1 and parse_fault("exit@load").rank is None
    assert faults.for_rank("sigkill@training@rank1", 1) == "sigkill@training@rank1"
    assert faults.for_rank("sigkill@training@rank1", 0) == ""
    assert faults.for_rank("exit@load", 3) == "exit@load"  # no selector: every rank
    with pytest.raises(CaseError, match="must be rankN"):
        parse_fault("sigkill@training@node1")
