"""The run folder, the contract every part shares: its layout, lock, writes, reads and schema.

Every writer of a run folder (the pytest session, `python -m reports merge`, tools/run_cases.py,
tools/measure_fit.py) and every reader goes through this module.
See docs/usage.md#the-run-folders-owner.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import platform
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from qlora_core.cases.case import LATER_FIELD_DEFAULTS
from qlora_core.measurement.result import (
    RESULT_SCHEMA_VERSION,
    Result,
    result_file_name,
    unknown_fields,
    write_atomic,
)

RESULTS_JSONL = "results.jsonl"
RESULTS_CSV = "results.csv"
RESULTS_PARQUET = "results.parquet"
ENVIRONMENT_JSON = "environment.json"
CASES_DIR = "cases"
MEASUREMENTS_DIR = "measurements"
LOCK_FILE = "session.lock"
TORN_SUFFIX = ".torn"
SCHEMA_KEY = "schema_version"
ENVIRONMENT_SCHEMA_VERSION = 1
_CASE_ID_IN_JSON = re.compile(r'"case_id":\s*"([^"]*)"')


class RunFolderInUseError(RuntimeError):
    """Another live session holds the run folder's lock."""


class SchemaError(ValueError):
    """A stored row or environment.json of a newer schema than this code reads."""


# -- layout ----------------------------------------------------------------------------------------
def case_result_path(run_dir: Path, case_hash: str, repeat: int = 0) -> Path:
    """Where a run's own Result lives: `cases/<hash>.json` (`-r2`, ... for later repeats)."""
    return Path(run_dir) / CASES_DIR / result_file_name(case_hash, repeat)


def measurement_path(run_dir: Path, name: str) -> Path:
    """An in-process measurement table: `measurements/<name>.csv`."""
    return Path(run_dir) / MEASUREMENTS_DIR / f"{name}.csv"


def measurement_paths(run_dir: Path) -> list[Path]:
    """The folder's measurement tables, sorted by name."""
    return sorted((Path(run_dir) / MEASUREMENTS_DIR).glob("*.csv"))


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


# -- the lock --------------------------------------------------------------------------------------
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


@contextmanager
def holding_run_dir(run_dir: Path) -> Iterator[Path]:
    """`with holding_run_dir(run_dir):` the folder's lock (RunFolderInUseError when held)."""
    handle = lock_run_dir(run_dir)
    try:
        yield run_dir
    finally:
        unlock_run_dir(handle, run_dir)


def _is_file_at(handle: IO[str], path: Path) -> bool:
    """Whether the open file `handle` is the file now at `path`."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


# -- writes ----------------------------------------------------------------------------------------
def append_result(run_dir: Path, result: Result) -> None:
    """Append `result` as one line of the folder's results.jsonl, whole or not at all."""
    append_line(Path(run_dir) / RESULTS_JSONL, result.to_json())


def append_line(path: Path, line: str) -> None:
    """Append `line` and a newline to `path`, whole or not at all, under the file's own lock.

    A write cut short (ENOSPC, EFBIG, an I/O error) is rolled back to the file's previous size
    before the error propagates, so the file never ends in a torn line through this function. The
    lock (flock on the file, held for the write only) keeps two appenders' lines apart and makes
    the roll-back safe: no other line can land after ours before it is cut.
    """
    data = memoryview((line + "\n").encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size_before = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size_before)
            raise
    finally:
        os.close(fd)  # releases the lock


def write_results(run_dir: Path, results: Iterable[Result]) -> Path:
    """Replace the folder's results.jsonl with `results`, one per line, atomically."""
    path = Path(run_dir) / RESULTS_JSONL
    write_atomic(path, "".join(r.to_json() + "\n" for r in results))
    return path


def write_environment(run_dir: Path, environment: dict[str, Any]) -> Path:
    """Replace the folder's environment.json with `environment`, stamped with this code's
    `ENVIRONMENT_SCHEMA_VERSION`, atomically."""
    path = Path(run_dir) / ENVIRONMENT_JSON
    fields = {k: v for k, v in environment.items() if k != SCHEMA_KEY}
    stamped = {SCHEMA_KEY: ENVIRONMENT_SCHEMA_VERSION, **fields}
    write_atomic(path, json.dumps(stamped, indent=2, default=str))
    return path


def write_measurement(run_dir: Path, name: str, csv_text: str) -> Path:
    """Replace `measurements/<name>.csv` with `csv_text`, atomically."""
    path = measurement_path(run_dir, name)
    write_atomic(path, csv_text)
    return path


def write_table_file(run_dir: Path, name: str, text: str) -> Path:
    """Replace the folder's `name` (results.csv, ...) with `text`, atomically."""
    path = Path(run_dir) / name
    write_atomic(path, text)
    return path


# -- schema ----------------------------------------------------------------------------------------
def _fill_case_fields(names: tuple[str, ...]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A migration step: a row's case gains each field of `names` it lacks, at its default."""

    def step(row: dict[str, Any]) -> dict[str, Any]:
        case = row.get("case")
        if isinstance(case, dict):
            row["case"] = {**case, **{n: LATER_FIELD_DEFAULTS[n] for n in names if n not in case}}
        return row

    return step


CASE_FIELDS_ADDED: dict[int, tuple[str, ...]] = {
    2: ("engine", "num_gpus", "strategy", "prequantized", "load_only", "cpu_offload"),
}
"""Case fields added after a schema version: a row of an older version may lack them, and they
read as their default ("as before", as `Case.hash` reads them: `spec.LATER_FIELDS`). A Case field
added later gets a new version here, and `RESULT_SCHEMA_VERSION` moves to it."""

RESULT_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    version - 1: _fill_case_fields(names) for version, names in CASE_FIELDS_ADDED.items()
}
"""Schema version N -> the step that turns a row of version N into one of version N + 1."""


def _version(data: dict[str, Any], current: int, where: str) -> int:
    """The schema version `data` records (1 when it records none); SchemaError when it is newer
    than `current`, ValueError when it is not a version."""
    version = data.get(SCHEMA_KEY, 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{SCHEMA_KEY} {version!r} is not a version (an integer from 1)")
    if version > current:
        raise SchemaError(
            f"{where}: {SCHEMA_KEY} {version} is newer than this qlora-bench reads ({current});"
            " read it with the qlora-bench that wrote it, or a newer one"
        )
    return version


def migrate_result_row(data: dict[str, Any], where: str = "a result row") -> dict[str, Any]:
    """A stored row (a dict of Result fields) brought to `RESULT_SCHEMA_VERSION` (a copy);
    SchemaError for a newer version."""
    version = _version(data, RESULT_SCHEMA_VERSION, where)
    row = dict(data)
    while version < RESULT_SCHEMA_VERSION:
        row = RESULT_MIGRATIONS[version](row)
        version += 1
        row[SCHEMA_KEY] = version
    return row


def result_from_row(data: dict[str, Any], where: str = "a result row") -> tuple[Result, str | None]:
    """The Result of a stored row, migrated, and a note naming any key that is not a Result field
    of this schema (read without them); SchemaError for a newer version, TypeError when required
    fields are missing."""
    row = migrate_result_row(data, where)
    unknown = unknown_fields(row)
    note = None
    if unknown:
        note = (
            f"{where}: {', '.join(unknown)} not a field of this qlora-bench's Result"
            f" ({SCHEMA_KEY} {row[SCHEMA_KEY]}); read without them"
        )
    return Result.from_dict({k: v for k, v in row.items() if k not in unknown}), note


def check_environment(environment: dict[str, Any], where: str = ENVIRONMENT_JSON) -> dict[str, Any]:
    """environment.json's fields once its schema is checked (SchemaError for a newer one). No
    version older than `ENVIRONMENT_SCHEMA_VERSION` needs a migration yet."""
    try:
        _version(environment, ENVIRONMENT_SCHEMA_VERSION, where)
    except SchemaError:
        raise
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return environment


# -- reads -----------------------------------------------------------------------------------------
@dataclass
class StoredResults:
    """The rows of a results.jsonl as read: the last per case hash, profile and repeat, in the
    order of their latest line; `notes` name the lines that were not read, and why."""

    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_results(path: Path) -> StoredResults:
    """Read a results.jsonl (absent: no rows). A line that is not JSON (a run killed mid-write),
    not a Result row, or has keys this Result lacks is named in the notes; a row of a newer schema
    refuses the whole file (SchemaError), an older one is migrated."""
    stored = StoredResults()
    path = Path(path)
    if not path.exists():
        return stored
    latest: dict[tuple[str, str, int], Result] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__}, not an object")
            result, note = result_from_row(data, where)
        except SchemaError:
            raise  # a newer schema: this code would misread the whole file
        except json.JSONDecodeError:
            stored.notes.append(f"{where}: not JSON (a line cut mid-write?); skipped")
            continue
        except (TypeError, ValueError) as exc:
            stored.notes.append(f"{where}: not a result row ({exc}); skipped")
            continue
        if note:
            stored.notes.append(note)
        key = (result.case_hash, result.profile, result.repeat)
        latest.pop(key, None)  # re-insert so the order is that of the latest run
        latest[key] = result
    stored.results = list(latest.values())
    return stored


def read_results_jsonl(path: Path) -> list[Result]:
    """`read_results(path).results`: for readers that do not report the lines left out (the
    session and `load_run` do)."""
    return read_results(path).results


def read_case_file(path: Path) -> Result:
    """A run's own Result file (`cases/<hash>.json`), migrated; SchemaError for a newer one,
    ValueError/TypeError for one that is not a Result."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, found {type(data).__name__}")
    result, note = result_from_row(data, str(path))
    if note:
        raise ValueError(note)
    return result


def read_environment(run_dir: Path) -> dict[str, Any]:
    """The folder's environment.json ({} when absent), its schema checked (SchemaError for a
    newer one); OSError/ValueError when it cannot be read as a JSON object."""
    path = Path(run_dir) / ENVIRONMENT_JSON
    if not path.exists():
        return {}
    environment = json.loads(path.read_text())
    if not isinstance(environment, dict):
        raise ValueError(f"{ENVIRONMENT_JSON} is not a JSON object")
    return check_environment(environment, str(path))


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
    path = case_result_path(run_dir, result.case_hash, result.repeat)
    relative = f"{CASES_DIR}/{path.name}"
    try:
        recorded = read_case_file(path)
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
