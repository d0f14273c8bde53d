"""A run folder's files, written so that nothing measured is lost: its lock, whole-line appends
to results.jsonl, the repair of a line torn mid-write, and the check that a stored row is what
its case's own file recorded, and a new folder's name (`qlora_plugin.session` uses them)."""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import platform
import re
from pathlib import Path
from typing import IO

from qlora_core.result import Result, result_file_name
from reports.frame import RESULTS_JSONL

CASES_DIR = "cases"
LOCK_FILE = "session.lock"
TORN_SUFFIX = ".torn"
_CASE_ID_IN_JSON = re.compile(r'"case_id":\s*"([^"]*)"')


class RunFolderInUseError(RuntimeError):
    """Another live session holds the run folder's lock."""


def lock_run_dir(run_dir: Path) -> IO[str]:
    """Hold an exclusive lock on `run_dir` while the returned file is open; `unlock_run_dir` ends it.

    flock belongs to the open file: the kernel releases it when the holder closes it or dies,
    so a lock left by a killed session never blocks the next one. The holder removes the file
    when it ends (`unlock_run_dir`) while still holding the lock, so a session that opened the
    file just before may lock a file no longer in the folder: it checks, after locking, that the
    file it holds is the one at the path, and otherwise takes the new one. The file names the
    holder for the error message.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    while True:
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunFolderInUseError(
                f"run folder {run_dir} is in use by another qlora-bench session ({holder});"
                " refusing to add to it. Wait for that session to end, or use another --out."
            ) from None
        if _is_file_at(handle, path):
            break
        handle.close()  # locked a file its holder had just removed: take the one there now
    handle.truncate(0)
    handle.write(f"pid {os.getpid()} on {platform.node()}, since {_dt.datetime.now():%Y-%m-%d %H:%M:%S}\n")
    handle.flush()
    return handle


def unlock_run_dir(handle: IO[str], run_dir: Path) -> None:
    """Remove the lock file `handle` holds, then release the lock (see `lock_run_dir`)."""
    path = run_dir / LOCK_FILE
    try:
        if _is_file_at(handle, path):
            path.unlink()
    finally:
        handle.close()


def _is_file_at(handle: IO[str], path: Path) -> bool:
    """Whether the open file `handle` is the file now at `path`."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


def append_line(path: Path, line: str) -> None:
    """Append `line` and a newline to `path`, whole or not at all.

    A write cut short (ENOSPC, EFBIG, an I/O error) is rolled back to the file's previous size
    before the error propagates, so the file never ends in a torn line through this function.
    """
    data = memoryview((line + "\n").encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size_before = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size_before)
            raise
    finally:
        os.close(fd)


def repair_torn_tail(path: Path) -> str | None:
    """Cut a last line that was cut mid-write (no final newline) off `path`; say what was done.

    The torn text is appended to `<path>.torn` first, so nothing is deleted; its case is then
    absent from the log and reruns. Returns None when the file is absent or ends whole.
    """
    if not path.exists():
        return None
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    keep = data.rfind(b"\n") + 1
    torn = data[keep:]
    side = path.with_name(path.name + TORN_SUFFIX)
    with side.open("ab") as f:
        f.write(torn + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.truncate(path, keep)
    match = _CASE_ID_IN_JSON.search(torn.decode(errors="replace"))
    case = f"case {match.group(1)}" if match else "an unidentified case"
    return (
        f"{path.name}: the last line ({len(torn)} bytes, {case}) was cut mid-write;"
        f" moved to {side.name}, the case reruns"
    )


def case_file_problem(run_dir: Path, result: Result) -> str | None:
    """Why `cases/<hash>.json` cannot vouch for a stored row (None when it can).

    The runner writes that file atomically before the row is appended, so a row whose file is
    missing, unreadable or different was not stored as measured.
    """
    relative = f"{CASES_DIR}/{result_file_name(result.case_hash, result.repeat)}"
    path = run_dir / relative
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, found {type(data).__name__}")
        recorded = Result.from_dict(data)
    except FileNotFoundError:
        return f"{relative} is missing"
    except (OSError, ValueError, TypeError) as exc:
        return f"{relative} is unreadable ({type(exc).__name__}: {exc})"
    if (recorded.status, recorded.started_at) != (result.status, result.started_at):
        return (
            f"{relative} does not match its row in {RESULTS_JSONL} (status {recorded.status!r}"
            f" started {recorded.started_at!r} vs {result.status!r} started {result.started_at!r})"
        )
    return None


def new_run_dir(out: Path, name: str) -> Path:
    """Create `<out>/<name>-<time>[-n]` (name: `<profile>-<matrix>`); mkdir without exist_ok, so
    that two sessions started in the same second never share a folder."""
    base = f"{name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    suffix = 1
    while True:
        run_dir = out / (base if suffix == 1 else f"{base}-{suffix}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            suffix += 1
