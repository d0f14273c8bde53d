"""The stop guard (qlora_plugin.interrupt), in this process: the first SIGINT or SIGTERM stops the
session through pytest's own stop, later ones do not pile up, one while the reports are written
stops only that; and the paragraph the console ends with. The real Ctrl-C of a `pytest bench`
subprocess is in tests/test_plugin_stop.py."""

from __future__ import annotations

import os
import signal

import pytest

from qlora_plugin.interrupt import ReportsInterrupted, StopGuard, stop_paragraph
from reports.run.completeness import incompleteness


@pytest.fixture
def guard():
    guard = StopGuard()
    guard.install()
    yield guard
    guard.restore()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "term"])
def test_the_first_stop_signal_stops_the_session_as_pytest_stops(guard, sig):
    with pytest.raises(pytest.exit.Exception) as stop:
        os.kill(os.getpid(), sig)
    assert stop.value.returncode == pytest.ExitCode.INTERRUPTED
    assert guard.received == sig.name and str(stop.value).startswith("qlora-bench: stopped by SIG")
    # The running test by its id, as a bench case's test is named (`test_case[cpu-<case id>]`).
    assert guard.running == {signal.SIGINT: "ctrl-c", signal.SIGTERM: "term"}[sig]
    os.kill(os.getpid(), sig)  # a second one while stopping: noted once, nothing raised
    assert guard.received == sig.name


def test_a_signal_while_the_reports_are_written_stops_only_that(guard):
    guard.writing_reports = True
    with pytest.raises(ReportsInterrupted, match="SIGTERM"):
        os.kill(os.getpid(), signal.SIGTERM)


def test_restore_gives_back_the_previous_handlers():
    before = signal.getsignal(signal.SIGTERM)
    guard = StopGuard()
    guard.install()
    assert signal.getsignal(signal.SIGTERM) != before
    guard.restore()
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_signal_ignored_by_whoever_started_the_session_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        guard = StopGuard()
        guard.install()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL  # the other one is handled
        guard.restore()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_paragraph_says_what_finished_what_did_not_and_how_to_resume():
    plan = {"a": 1, "b": 1, "c": 1}
    missing = incompleteness({"planned_runs": plan}, [("a", 0)], "out/run")
    stopped = StopGuard(received="SIGINT", running="cpu-b")
    lines = stop_paragraph(
        stopped, "out/run", 3, missing, ran=1, reused=0, reports="written", label="cpu-{}".format
    )
    assert lines[0].startswith("qlora-bench: stopped by SIGINT (Ctrl-C) during cpu-b;")
    assert "  finished: 1 of 3 cases stored in out/run (1 run by this session)" in lines
    assert "  not finished: 2 cases (cpu-b, cpu-c)" in lines
    assert lines[-1] == "  resume with: pytest bench --resume out/run"
    complete = stop_paragraph(stopped, "out/run", 3, None, ran=0, reused=3, reports="written")
    assert "  finished: 3 of 3 cases stored in out/run (0 run by this session, 3 reused)" in complete
    assert not any("not finished" in line for line in complete)
