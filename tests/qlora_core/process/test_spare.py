"""Warm spare children (qlora_core/process/spare.py): the import is hidden, a dead spare is replaced, no
spare outlives its runner, and a spare imports nothing that touches the device."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from processes import alive, live_processes

from qlora_core.cases.case import Case
from qlora_core.process.request import RunOptions, child_env
from qlora_core.process.runner import run_case
from qlora_core.process.spare import (
    LIBRARY_IMPORTS,
    NO_CONTEXT,
    SPARE_DEPTH,
    SPARE_IMPORTS,
    SPARE_READY,
    Spare,
    SparePool,
    end,
    read_verdict,
    same_environment,
)

CASE = Case("tiny", warmup_steps=1, measured_steps=2, seq_len=32)
ROOT = Path(__file__).resolve().parents[3]


def _imports_touch_device(names: tuple[str, ...]) -> tuple[bool, bool]:
    """(bitsandbytes imported, torch.cuda initialised) after importing `names` in a fresh process."""
    code = (
        "import importlib, sys, torch\n"
        f"for n in {list(names)!r}: importlib.import_module(n)\n"
        "print('bitsandbytes' in sys.modules, torch.cuda.is_initialized())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    bnb, cuda = out.stdout.split()[-2:]
    return bnb == "True", cuda == "True"


@pytest.mark.slow
def test_a_spare_imports_nothing_that_touches_the_device():
    assert _imports_touch_device(SPARE_IMPORTS) == (False, False)
    # The check can fail: transformers' Trainer callbacks pull in peft and bitsandbytes.
    assert _imports_touch_device(("transformers.trainer_callback",))[0]


def _wait_ready(pool: SparePool, timeout_s: float = 120.0) -> None:
    spare = pool.waiting
    assert spare is not None
    deadline = time.monotonic() + timeout_s
    while SPARE_READY not in spare.log_path.read_text():
        assert spare.process.poll() is None, spare.log_path.read_text()
        assert time.monotonic() < deadline, "the spare did not finish its imports"
        time.sleep(0.2)


def _spares_of(parent_pid: int) -> list[int]:
    """Pids of the spare processes whose runner is `parent_pid` (their command line names it)."""
    return [
        pid
        for pid, _, argv in live_processes()
        if b"qlora_core.process.spare" in argv and str(parent_pid).encode() in argv
    ]


def _started(pool: SparePool) -> Spare:
    """The pool's spare, started now."""
    pool.ensure()
    assert pool.waiting is not None
    return pool.waiting


@pytest.mark.slow
def test_the_second_case_runs_in_a_warm_spare_with_its_imports_done(tmp_path):
    with SparePool() as pool:
        cold = run_case(CASE, RunOptions(), tmp_path / "cold.json", pool)
        assert cold.status == "ok" and cold.timing.warm_spare is False and cold.timing.spare_import_s is None
        _wait_ready(pool)  # on a loaded machine, the imports may outlast the first case
        warm = run_case(CASE.replace(seed=1), RunOptions(), tmp_path / "warm.json", pool)
    assert warm.status == "ok", warm.reason
    assert (
        warm.timing.warm_spare is True
        and warm.timing.spare_import_s is not None
        and warm.timing.spare_import_s > 0
    )
    # Hand-over to the case's first stage: a fraction of the cold child's imports.
    assert (
        cold.timing.import_s is not None
        and warm.timing.start_s is not None
        and warm.timing.import_s is not None
    )
    assert warm.timing.start_s + warm.timing.import_s < 0.5 * cold.timing.import_s, (
        warm.timing.start_s,
        warm.timing.import_s,
        cold.timing.import_s,
    )
    assert SPARE_READY in (tmp_path / "warm.log").read_text()  # the spare's log is the case's log


@pytest.mark.slow
def test_a_spare_killed_while_waiting_is_replaced_and_the_case_runs(tmp_path):
    with SparePool(depth=1) as pool:
        first = _started(pool)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait()
        result = run_case(CASE, RunOptions(), tmp_path / "r.json", pool)
        assert result.status == "ok" and result.timing.warm_spare is False  # ran cold
        assert pool.waiting is not None and pool.waiting.process.pid != first.process.pid
        assert pool.waiting.process.poll() is None  # a new spare waits for the next case


@pytest.mark.slow
def test_a_dead_spare_is_skipped_for_the_next_one_and_the_pool_refilled(tmp_path):
    with SparePool() as pool:  # two waiting
        first = _started(pool)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait()
        result = run_case(CASE, RunOptions(), tmp_path / "r.json", pool)
        assert result.status == "ok" and result.timing.warm_spare is True, result.reason  # the second one
        assert pool.waiting is not None and pool.waiting.process.poll() is None
        assert pool.waiting.process.pid != first.process.pid


@pytest.mark.slow
def test_a_spare_that_dies_after_the_hand_over_before_reading_leaves_the_case_to_a_cold_child(tmp_path):
    with SparePool() as pool:
        spare = _started(pool)
        os.kill(spare.process.pid, signal.SIGSTOP)  # alive for `take`, never reads the request
        killer = threading.Timer(1.0, os.kill, (spare.process.pid, signal.SIGKILL))
        killer.start()
        result = run_case(CASE, RunOptions(), tmp_path / "r.json", pool)
        killer.join()
    assert result.status == "ok" and result.timing.warm_spare is False, result.reason


@pytest.mark.slow
def test_a_primed_pool_imports_the_libraries_in_its_spares_once_the_probe_saw_no_context(tmp_path):
    """The probe (the first spare, started before any case) imports bitsandbytes, peft and the
    Trainer and finds no CUDA context (none on the CPU); the spares after it import them too, so a
    warm case imports nothing left of them."""
    with SparePool() as pool:
        pool.prime()
        assert pool.imports_libraries is None  # not known until the probe answers
        first = run_case(CASE, RunOptions(), tmp_path / "first.json", pool)
        assert first.status == "ok" and first.timing.warm_spare is True, first.reason
        assert pool.imports_libraries is True
        assert pool.waiting is not None and pool.waiting.libraries
        _wait_ready(pool)
        second = run_case(CASE.replace(seed=1), RunOptions(), tmp_path / "second.json", pool)
    assert second.status == "ok" and second.timing.warm_spare is True, second.reason
    log = (tmp_path / "second.log").read_text()
    assert f"with {', '.join(LIBRARY_IMPORTS)}: no CUDA context" in log
    assert second.timing.import_s is not None and second.timing.import_s < 0.2, (
        second.timing.import_s
    )  # all done before


@pytest.mark.slow
def test_a_probe_that_dies_before_it_answers_gives_no_proof():
    with SparePool() as pool:
        pool.prime()
        probe = pool.waiting
        assert probe is not None and probe.libraries and probe.verdict_path is not None
        os.kill(probe.process.pid, signal.SIGKILL)
        probe.process.wait()
        pool.ensure()  # replaces the dead probe: without the proof, without the libraries
        assert pool.imports_libraries is False
        assert pool.waiting is not None and not pool.waiting.libraries and pool.waiting.verdict_path is None


@pytest.mark.parametrize(
    ("written", "alive", "verdict"),
    [(NO_CONTEXT, True, True), ("contexts on [0]", False, False), (None, True, None), (None, False, False)],
)
def test_a_probes_verdict(tmp_path, written, alive, verdict):
    process = subprocess.Popen(["sleep", "30"] if alive else ["true"])
    if not alive:
        process.wait()
    verdict_path = tmp_path / "probe.verdict"
    probe = Spare(process, tmp_path / "probe.log", {}, libraries=True, verdict_path=verdict_path)
    if written is not None:
        verdict_path.write_text(written)
    try:
        assert read_verdict(probe) is verdict
    finally:
        process.kill()
        process.wait()


@pytest.mark.gpu
@pytest.mark.slow
def test_on_the_gpu_the_libraries_create_no_cuda_context(gpu_required):
    """What lets spares import bitsandbytes, peft and the Trainer while another case runs: no
    device memory for NVML to count (torch's CUDA state is initialised, no primary context)."""
    with SparePool() as pool:
        pool.prime()
        _wait_ready(pool)
        assert pool.imports_libraries is True, pool.waiting.log_path.read_text() if pool.waiting else ""


def test_a_spare_started_under_another_environment_is_not_used(monkeypatch):
    with SparePool() as pool:
        spare = _started(pool)
        monkeypatch.setenv("QLORA_SPARE_TEST", "changed")
        assert pool.take() is None
        spare.process.wait(timeout=10)  # ended, not left behind
        assert not spare.log_path.exists()


def test_a_spare_survives_pytest_moving_to_the_next_test(monkeypatch):
    """pytest rewrites PYTEST_CURRENT_TEST at every test phase: the spare started during one case's
    test must still be taken for the next (on the H200 every case of a bench run ran cold)."""
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "bench/test_memory.py::test_case[a] (call)")
    with SparePool() as pool:
        spare = _started(pool)
        monkeypatch.setenv("PYTEST_CURRENT_TEST", "bench/test_memory.py::test_case[b] (setup)")
        assert pool.take() is spare
        end(spare)


def test_a_spare_survives_torch_setting_its_cache_dir_in_the_runner(monkeypatch):
    """torch writes TORCHINDUCTOR_CACHE_DIR into the runner's os.environ when peft imports inductor
    in-process (the session's parameter counts): that must not discard the spare; any other change
    must, as must a change of that variable once the spare had it."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    started = child_env()
    assert same_environment(started, {**started, "TORCHINDUCTOR_CACHE_DIR": "/tmp/torchinductor_x"})
    assert not same_environment(started, {**started, "TRANSFORMERS_OFFLINE": "1"})
    moved = {**started, "TORCHINDUCTOR_CACHE_DIR": "/elsewhere"}
    assert not same_environment({**started, "TORCHINDUCTOR_CACHE_DIR": "/tmp/a"}, moved)
    with SparePool() as pool:
        spare = _started(pool)
        from qlora_core.cases.case import LESSON_TARGET_MODULES
        from qlora_core.measurement import memory

        memory.empty_weight_counts("tiny", 16, LESSON_TARGET_MODULES)  # what the session runs
        assert pool.take() is spare
        end(spare)


def _eventually_spares_of(parent_pid: int, timeout_s: float = 30.0) -> list[int]:
    """`_spares_of`, waiting for a just-started spare to exec (until then /proc shows the forked
    runner's own command line, not the spare's)."""
    deadline = time.monotonic() + timeout_s
    while not (found := _spares_of(parent_pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_no_spare_outlives_its_pool():
    with SparePool() as pool:
        pool.ensure()
        assert _eventually_spares_of(os.getpid())
    assert _spares_of(os.getpid()) == []


def test_a_deepened_pool_keeps_one_spare_per_lane_then_its_own_depth_again():
    with SparePool() as pool:
        with pytest.raises(RuntimeError), pool.deepened(SPARE_DEPTH + 2):
            pool.ensure()
            assert pool.depth == SPARE_DEPTH + 2
            deadline = time.monotonic() + 30
            while len(_spares_of(os.getpid())) < SPARE_DEPTH + 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(_spares_of(os.getpid())) == SPARE_DEPTH + 2
            raise RuntimeError("a lane failed")
        assert pool.depth == SPARE_DEPTH  # restored on the way out, error or not
        with pool.deepened(1):  # never below the pool's own depth
            assert pool.depth == SPARE_DEPTH


def test_only_the_pools_own_thread_starts_spares():
    """PDEATHSIG kills a child when the thread that started it ends: a spare started by a
    side-by-side lane's thread would die with the lane."""
    with SparePool() as pool:
        worker = threading.Thread(target=lambda: (pool.prime(), pool.ensure()))
        worker.start()
        worker.join()
        assert pool.waiting is None
        pool.ensure()
        assert pool.waiting is not None


def _waiting_spare(tmp_path: Path, name: str, log: str) -> Spare:
    """A stand-in spare: a live process and a log that says whether its imports are done."""
    path = tmp_path / f"{name}.log"
    path.write_text(log)
    argv = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, start_new_session=True)
    return Spare(process, path, child_env())


def test_side_by_side_hands_out_only_spares_whose_imports_are_done(tmp_path):
    """Beside a group's running cases a spare still importing (at a lower priority) is slower than
    a cold start; alone, a spare that has imported for a while is still the better start."""
    with SparePool() as pool:
        importing = _waiting_spare(tmp_path, "importing", "")
        ready = _waiting_spare(tmp_path, "ready", f"{SPARE_READY} (pid 1, imports 9.0 s)\n")
        pool._waiting += [importing, ready]
        with pool.deepened(2):
            assert pool.take() is ready
            assert pool.take() is None and pool.waiting is importing  # left for a later case
        assert pool.take() is importing  # outside a group: the oldest, ready or not
        for spare in (importing, ready):
            end(spare)


def test_a_spare_dies_with_a_runner_killed_outright():
    code = (
        "import os, signal, sys, time\n"
        "from qlora_core.process.spare import SparePool\n"
        "pool = SparePool(); pool.ensure(); print(pool.waiting.process.pid, flush=True)\n"
        "time.sleep(1.0); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    runner = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    spare_pid = int(runner.stdout.split()[0])
    deadline = time.monotonic() + 10
    while alive(spare_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(spare_pid)
