"""Ctrl-C and SIGTERM during a bench session: stop cleanly, say what finished and how to resume.

While a session's run folder is open, `StopGuard` turns SIGINT and SIGTERM (a `timeout`, a job
scheduler) into pytest's own stop (`pytest.exit`): the running case's processes are ended by the
runner (`runner.run_case` kills its process group on any exception), pytest ends the session, and
the session end writes what the stored runs allow (results, reports marked incomplete) and
removes the folder's lock. A second signal while the session stops is ignored; one while the
reports are being written stops that writing (`ReportsInterrupted`), which the session end names.
`stop_paragraph` is what the console ends with: the signal, the case that was running, what
finished and what did not, and the command that resumes the run. No traceback: a stop is an
outcome, not an error.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import pytest

from reports.run.completeness import Incompleteness, completing_command

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_SIGNAL_WORDS = {"SIGINT": "SIGINT (Ctrl-C)", "SIGTERM": "SIGTERM"}
_TEST_ID = re.compile(r"\[(.+)\]")
NAMED = 6  # cases named in "not finished"; the rest are counted


class ReportsInterrupted(BaseException):
    """A stop signal came while the session end was writing the reports."""


@dataclass
class StopGuard:
    """The session's stop signals: the first stops the session, the rest are noted."""

    received: str | None = None
    """The first stop signal's name (SIGINT, SIGTERM); None: not stopped."""
    running: str = ""
    """The test (for a case: its id) that ran when the stop came; "" between tests."""
    writing_reports: bool = False
    _previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue  # ignored by whoever started us (a background job, nohup): left so
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.writing_reports:
            raise ReportsInterrupted(name)
        if self.received is not None:
            return  # already stopping: the running case's processes are being ended
        self.received, self.running = name, _current_test()
        raise pytest.exit.Exception(
            f"qlora-bench: stopped by {_SIGNAL_WORDS.get(name, name)}",
            returncode=pytest.ExitCode.INTERRUPTED,
        )


def _current_test() -> str:
    """The running test as pytest names it in PYTEST_CURRENT_TEST: a case's id, else the test."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    match = _TEST_ID.search(current)
    return match.group(1) if match else current.rsplit(" (", 1)[0]


def stop_paragraph(
    guard: StopGuard,
    run_dir: Any,
    planned_cases: int,
    missing: Incompleteness | None,
    ran: int,
    reused: int,
    reports: str,
    label: Callable[[str], str] = str,
) -> list[str]:
    """The console's paragraph after a stop: what stopped it and where, what finished, what did
    not, what happened to the reports (`reports`), and the command that resumes the run.
    `label`: a case id as the console names it (the profile prefix)."""
    how = _SIGNAL_WORDS.get(guard.received or "", guard.received or "a stop")
    where = f" during {guard.running}" if guard.running else ""
    stored = planned_cases - len(missing.missing_cases) if missing else planned_cases
    session = f"{ran} run by this session" + (f", {reused} reused" if reused else "")
    lines = [
        f"qlora-bench: stopped by {how}{where}; the running case's processes were ended and it left no row.",
        f"  finished: {stored} of {planned_cases} cases stored in {run_dir} ({session})",
    ]
    if missing is not None:
        names = [label(c) for c in missing.missing_cases[:NAMED]]
        more = len(missing.missing_cases) - len(names)
        if names:
            lines.append(
                f"  not finished: {len(missing.missing_cases)} cases ({', '.join(names)}"
                + (f" +{more} more" if more > 0 else "")
                + ")"
            )
        if missing.short_cases:
            lines.append(f"  not finished: {len(missing.short_cases)} cases short of their repeats")
    lines.append(f"  reports: {reports}")
    lines.append(f"  resume with: {completing_command(run_dir)}")
    return lines
