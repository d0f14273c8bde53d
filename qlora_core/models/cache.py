"""The checkpoint cache: where built models live, and how each is built exactly once.

Everything written to the cache is built in a temp dir beside its final place under an exclusive
lock, finished with a marker file, then renamed into place: a reader sees nothing or all of it,
and two processes never build the same thing twice. A marker whose recipe differs from the
writer's current recipe marks an artifact to rebuild. No torch at import.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CACHE_ENV = "QLORA_BENCH_CACHE"
"""Environment variable naming the cache directory (default `~/.cache/qlora-bench`)."""
MARKER = "qlora-bench-complete.json"
"""The file that marks a cached directory complete; written last, with the facts of the build."""


def cache_dir() -> Path:
    """$QLORA_BENCH_CACHE, else ~/.cache/qlora-bench (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qlora-bench"


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_complete(directory: Path, recipe: str) -> bool:
    """True when `directory` was published by a build with this `recipe`."""
    marker = _read_marker(directory)
    return marker is not None and marker.get("recipe") == recipe


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing); released when the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(final: Path, recipe: str, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Make `final` a complete directory built by `build(tmp_dir)`, once across processes.

    `build` writes into an empty temp dir beside `final` and returns facts for the marker. The
    marker goes in last, then one rename publishes the directory.
    """
    if is_complete(final, recipe):
        return final
    with _exclusive_lock(final.parent / f".{final.name}.lock"):
        # Another process may have finished it while we waited for the lock.
        if is_complete(final, recipe):
            return final
        # Holding the lock, anything else here is ours to clear: temp dirs of a killed build,
        # or an artifact from an older recipe.
        for stale in final.parent.glob(f".{final.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache may be shared
            started = time.perf_counter()
            facts = build(tmp)
            marker = {
                "recipe": recipe,
                "build_s": round(time.perf_counter() - started, 2),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "pid": os.getpid(),
                **facts,
            }
            (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def library_versions() -> dict[str, str]:
    """torch and transformers versions, for a marker: which stack wrote the artifact."""
    import torch
    import transformers

    return {"torch_version": torch.__version__, "transformers_version": transformers.__version__}
