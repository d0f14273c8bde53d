"""`pytest bench` in subprocesses, on what a newcomer does to a run: --resume of a folder that is
not a run folder or with a conflicting option (refused before anything is written), resume
without the original options (the folder's are kept), Ctrl-C or SIGTERM during a case (one
paragraph, no traceback, the lock removed), and an interrupted smoke run completed by the
command its claims.md names."""

from __future__ import annotations

import json
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from reports.run.folder import LOCK_FILE

ROOT = Path(__file__).resolve().parents[1]
FIRST_TINY = "tiny-nf4-dq-bf16-b4-s128-w1m4-trainer"  # a smoke case on the CPU tier
SMOKE_CASES = 6
# The smoke tier takes ~2 min on an idle 2-core machine; its bf16 CPU matmuls far longer on a
# busy one.
SMOKE_WAIT_S = 3600


def bench_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "bench", "-p", "no:cacheprovider", *args]


def bench(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(bench_command(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _stop_signals_default() -> None:
    # A test run started in the background ignores SIGINT, and a child inherits that; the session
    # keeps a signal ignored by whoever started it, so the child gets Python's default back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start_bench(sink, *args: str) -> subprocess.Popen:
    """`pytest bench ARGS` in the background, its console into `sink`, stoppable by SIGINT/SIGTERM."""
    return subprocess.Popen(
        bench_command(*args),
        cwd=ROOT,
        stdout=sink,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_stop_signals_default,
    )


def listing(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


def smoke_folder(tmp_path: Path) -> Path:
    """A run folder of the smoke tier as `pytest bench --matrix smoke` starts it (its environment)."""
    run_dir = tmp_path / "cpu-smoke-20260101-000000"
    run_dir.mkdir()
    env = {"profile": "cpu", "matrix": "smoke", "forced": {}, "shard": None, "models": [], "repeat": None}
    (run_dir / "environment.json").write_text(json.dumps(env))
    return run_dir


def test_resume_of_a_folder_that_is_not_a_run_folder_is_refused_at_once_with_nothing_written(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run\n")  # like /tmp: a folder holding other things
    before = listing(tmp_path)
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = bench("--resume", str(tmp_path), timeout=120)
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"--resume {tmp_path}: not a qlora-bench run folder (no environment.json" in proc.stderr
    assert listing(tmp_path) == before  # no session.lock, environment.json or cases/
    # Refused while reading the options, before collection: seconds of CPU (on a shared machine
    # the wall time adds the wait for a core; on an idle one it is about this).
    cpu_s = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    assert cpu_s < 5, cpu_s


def test_resume_with_a_conflicting_tier_is_refused_naming_both(tmp_path):
    run_dir = smoke_folder(tmp_path)
    before = listing(run_dir)
    proc = bench("--resume", str(run_dir), "--matrix", "default", "--collect-only", "-q", timeout=120)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout[-2000:]
    assert "--matrix default conflicts with the folder's smoke" in proc.stderr
    assert listing(run_dir) == before


def test_resume_without_the_tier_keeps_the_folders(tmp_path):
    proc = bench("--resume", str(smoke_folder(tmp_path)), "--collect-only", "-q", timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cases = [line for line in proc.stdout.splitlines() if "::test_case[cpu-" in line]
    assert len(cases) == SMOKE_CASES, proc.stdout  # the default tier has 40 and more


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.poll() is None, f"the session ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout_s:g} s"
        time.sleep(0.2)


def _only_run_dir(out: Path) -> Path | None:
    dirs = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
    return dirs[0] if len(dirs) == 1 else None


def _stored_rows(run_dir: Path | None) -> int:
    path = run_dir / "results.jsonl" if run_dir else None
    return len(path.read_text().splitlines()) if path and path.exists() else 0


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "words"), [(signal.SIGINT, "SIGINT (Ctrl-C)"), (signal.SIGTERM, "SIGTERM")])
def test_a_stop_during_the_first_case_ends_with_one_paragraph_and_no_traceback(tmp_path, sig, words):
    out = tmp_path / "out"
    console = tmp_path / "console.txt"
    # The case hangs in training until stopped (test-only fault), so the stop comes mid-case.
    args = ("--out", str(out), "--matrix", "smoke", "-k", f"test_case and {FIRST_TINY}")
    with console.open("w") as sink:
        proc = start_bench(sink, *args, "--force", "extra=fault:hang@training")
        try:
            # The child writes its Result as each stage starts (its log moves in at the end).
            _wait_for(lambda: any(out.glob("*/cases/*.json")), proc, "case started")
            time.sleep(1)
            proc.send_signal(sig)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = console.read_text()
    run_dir = _only_run_dir(out)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, text[-3000:]
    assert "Traceback" not in text and "RunFolderError" not in text and "NOT WRITTEN" not in text, text
    assert f"qlora-bench: stopped by {words} during cpu-{FIRST_TINY};" in text, text[-3000:]
    assert f"finished: 0 of {SMOKE_CASES} cases stored in {run_dir}" in text
    assert "reports: no run finished, so no report was written" in text
    assert f"resume with: pytest bench --resume {run_dir}" in text
    assert not (run_dir / LOCK_FILE).exists()
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["incomplete"]["missing_runs"] == SMOKE_CASES and "finished_at" in env
    # The hanging case's processes went with the session.
    leftovers = [
        p for p in psutil.process_iter(["cmdline"]) if str(run_dir) in " ".join(p.info["cmdline"] or ())
    ]
    assert leftovers == []


@pytest.mark.slow
def test_an_interrupted_smoke_run_says_so_and_the_command_it_names_completes_it(tmp_path):
    out = tmp_path / "out"
    console = tmp_path / "console.txt"
    with console.open("w") as sink:
        proc = start_bench(sink, "--out", str(out), "--matrix", "smoke")
        try:
            _wait_for(lambda: _stored_rows(_only_run_dir(out)) >= 4, proc, "4 cases stored", SMOKE_WAIT_S)
            proc.send_signal(signal.SIGINT)  # during the fifth case
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    run_dir = _only_run_dir(out)
    assert run_dir is not None and proc.returncode == pytest.ExitCode.INTERRUPTED, console.read_text()[-3000:]
    stored = _stored_rows(run_dir)
    assert stored in (4, 5)  # the fifth may have finished as the signal came
    first_line = (run_dir / "claims.md").read_text().splitlines()[0]
    assert first_line.startswith(f"incomplete: {SMOKE_CASES - stored} of {SMOKE_CASES} cases missing (")
    assert first_line.endswith(f"; complete it with: pytest bench --resume {run_dir}")
    assert (run_dir / "tables.md").read_text().splitlines()[0] == first_line
    assert f"resume with: pytest bench --resume {run_dir}" in console.read_text()
    assert "claims.md and tables.md written, marked incomplete" in console.read_text()
    assert not (run_dir / LOCK_FILE).exists()

    # The command the line names, as given (pytest bench ...: here through this interpreter).
    command = shlex.split(first_line.split("complete it with: ", 1)[1])
    assert command[:2] == ["pytest", "bench"]
    resumed = bench(*command[2:], timeout=SMOKE_WAIT_S)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert _stored_rows(run_dir) == SMOKE_CASES  # the missing ones ran; the tier stayed smoke
    assert not (run_dir / "claims.md").read_text().startswith("incomplete")
    assert not (run_dir / "tables.md").read_text().startswith("incomplete")
    assert json.loads((run_dir / "environment.json").read_text())["incomplete"] is None
    assert "incomplete" not in resumed.stdout
    assert not (run_dir / LOCK_FILE).exists()  # a clean finish removes the lock too
