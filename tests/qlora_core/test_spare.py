"""Warm spare children (qlora_core/spare.py): the import is hidden, a dead spare is replaced, no
spare outlives its runner, and a spare imports nothing that touches the device."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qlora_core.runner import RunOptions, _spare_due, child_env, run_case
from qlora_core.spare import SPARE_IMPORTS, SPARE_READY, Spare, SparePool, end, same_environment
from qlora_core.spec import Case

CASE = Case("tiny", warmup_steps=1, measured_steps=2, seq_len=32)
ROOT = Path(__file__).resolve().parents[2]


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


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _spares_of(parent_pid: int) -> list[int]:
    """Pids of the spare processes whose runner is `parent_pid` (their command line names it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--spare" in argv and str(parent_pid).encode() in argv and _alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def _started(pool: SparePool) -> Spare:
    """The pool's spare, started now."""
    pool.ensure()
    assert pool.waiting is not None
    return pool.waiting


@pytest.mark.slow
def test_the_second_case_runs_in_a_warm_spare_with_its_imports_done(tmp_path):
    with SparePool() as pool:
        cold = run_case(CASE, RunOptions(), tmp_path / "cold.json", pool)
        assert cold.status == "ok" and cold.warm_spare is False and cold.spare_import_s is None
        _wait_ready(pool)  # on a loaded machine, the imports may outlast the first case
        warm = run_case(CASE.replace(seed=1), RunOptions(), tmp_path / "warm.json", pool)
    assert warm.status == "ok", warm.reason
    assert warm.warm_spare is True and warm.spare_import_s is not None and warm.spare_import_s > 0
    # Hand-over to the case's first stage: a fraction of the cold child's imports.
    assert cold.import_s is not None and warm.start_s is not None and warm.import_s is not None
    assert warm.start_s + warm.import_s < 0.5 * cold.import_s, (warm.start_s, warm.import_s, cold.import_s)
    assert SPARE_READY in (tmp_path / "warm.log").read_text()  # the spare's log is the case's log


@pytest.mark.slow
def test_a_spare_killed_while_waiting_is_replaced_and_the_case_runs(tmp_path):
    with SparePool() as pool:
        first = _started(pool)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait()
        result = run_case(CASE, RunOptions(), tmp_path / "r.json", pool)
        assert result.status == "ok" and result.warm_spare is False  # ran cold
        assert pool.waiting is not None and pool.waiting.process.pid != first.process.pid
        assert pool.waiting.process.poll() is None  # a new spare waits for the next case


@pytest.mark.slow
def test_a_spare_that_dies_after_the_hand_over_before_reading_leaves_the_case_to_a_cold_child(tmp_path):
    with SparePool() as pool:
        spare = _started(pool)
        os.kill(spare.process.pid, signal.SIGSTOP)  # alive for `take`, never reads the request
        killer = threading.Timer(1.0, os.kill, (spare.process.pid, signal.SIGKILL))
        killer.start()
        result = run_case(CASE, RunOptions(), tmp_path / "r.json", pool)
        killer.join()
    assert result.status == "ok" and result.warm_spare is False, result.reason


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
    assert not same_environment(started, {**started, "HF_HUB_OFFLINE": "1"})
    moved = {**started, "TORCHINDUCTOR_CACHE_DIR": "/elsewhere"}
    assert not same_environment({**started, "TORCHINDUCTOR_CACHE_DIR": "/tmp/a"}, moved)
    with SparePool() as pool:
        spare = _started(pool)
        from qlora_core import measure
        from qlora_core.spec import LESSON_TARGET_MODULES

        measure.empty_weight_counts("tiny", 16, LESSON_TARGET_MODULES)  # what the session runs
        assert pool.take() is spare
        end(spare)


@pytest.mark.parametrize(
    ("status", "reason", "due"),
    [
        ("crashed", "died during start-up", False),
        ("crashed", "died during model creation", False),
        ("crashed", "died during model resolution", False),
        ("crashed", "died during load", True),
        ("crashed", "died during load (injected fault oom@load)", True),
        ("crashed", "died during training", True),
        ("oom", "load: CUDA out of memory", True),  # ended: the next case needs its spare
        ("crashed", "the child wrote no result", False),
    ],
)
def test_the_next_spare_starts_when_the_running_case_loads(tmp_path, status, reason, due):
    path = tmp_path / "r.json"
    assert _spare_due(path) is False  # no Result file yet
    path.write_text(json.dumps({"status": status, "reason": reason}))
    assert _spare_due(path) is due


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


def test_a_spare_dies_with_a_runner_killed_outright():
    code = (
        "import os, signal, sys, time\n"
        "from qlora_core.spare import SparePool\n"
        "pool = SparePool(); pool.ensure(); print(pool.waiting.process.pid, flush=True)\n"
        "time.sleep(1.0); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    runner = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    spare_pid = int(runner.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _alive(spare_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(spare_pid)
