"""Processes as /proc shows them, for the tests that check what the runner leaves running."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def _state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of `pid`, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    state = _state(pid)
    return state is not None and state[0] != "Z"


def live_processes() -> Iterator[tuple[int, int, list[bytes]]]:
    """(pid, parent pid, argv) of every process alive now, zombies left out."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        state = _state(int(proc.name))
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if state is not None and state[0] != "Z":
            yield int(proc.name), state[1], argv
