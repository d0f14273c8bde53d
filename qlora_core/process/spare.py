"""Warm spare children: a case's child whose imports are already done when its case arrives.

A `SparePool` keeps spares (`python -m qlora_core.process.spare PID`), each blocked on its stdin
after its imports; `launch.launch` hands the next single-GPU case to the oldest, which becomes
that case's child with every guarantee of a cold one. See docs/side-by-side.md#warm-spares.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from qlora_core.process.child import child_main
from qlora_core.process.lifecycle import arm_stack_dump, die_with_parent
from qlora_core.process.request import child_env, quiet_offline_kernel_notices

SPARE_DEPTH = 2
"""Spares a pool keeps waiting (`SparePool`)."""
SPARE_NICE = 10
"""Niceness a spare adds to its own while it imports (undone at hand-over where allowed)."""
SPARE_READY = "spare ready"
"""The line a spare prints to its log once its imports are done."""
SPARE_IMPORTS: tuple[str, ...] = (
    "torch",
    "transformers",
    "transformers.models.llama.modeling_llama",  # every shape and the real model are Llamas
    "qlora_core.engines.data",
    "qlora_core.models.load",
    "qlora_core.measurement.memory",
    "qlora_core.measurement.quality",
    "qlora_core.models.resolve",
    "qlora_core.engines",
)
"""What a spare imports before its case: none of them initialises CUDA or imports bitsandbytes
(a test holds them to it)."""
LIBRARY_IMPORTS: tuple[str, ...] = ("bitsandbytes", "peft", "transformers.trainer")
"""What a case imports after its CUDA set-up; a spare imports them too once `SparePool.prime`'s
probe showed that they create no CUDA context on this machine."""
LIBRARIES_FLAG = "--libraries"
"""The spare's command-line flag to import `LIBRARY_IMPORTS` too (then a verdict path may follow)."""
NO_CONTEXT = "no-context"
"""A probe's verdict file when its library imports left every device without a CUDA context."""


@dataclass
class Spare:
    """One waiting spare: its process (stdin a pipe), its log so far, the environment it got."""

    process: subprocess.Popen
    log_path: Path
    env: dict[str, str]
    libraries: bool = False  # it imports `LIBRARY_IMPORTS` too
    verdict_path: Path | None = None  # the probe's: where it writes whether they created a context

    @property
    def ready(self) -> bool:
        """Whether its imports are done (it printed `SPARE_READY`)."""
        try:
            return SPARE_READY in self.log_path.read_text(errors="replace")
        except OSError:
            return False


class SparePool:
    """Up to `depth` warm spares, handed out oldest first. A context manager: leaving it (or the
    interpreter exiting) ends the waiting spares; a spare whose parent died is ended by the kernel
    (PDEATHSIG).

    Two by default (`SPARE_DEPTH`): with one, a case that ended early (an OOM at its first step,
    10-15 s on the H200) left the next case a spare that had imported for only that long, and it
    waited the rest (0-14 s of the t4 tier's uncapped reruns on the H200); the second spare has
    had a whole case more.

    Thread-safe: cases side by side (`qlora_core.process.side_by_side`) take spares from one thread each;
    `deepened` keeps one spare per lane waiting while they run. Only the thread that made the pool
    starts spares (`ensure` elsewhere does nothing): PDEATHSIG kills a child when the *thread*
    that started it ends, and a lane's thread ends with its group."""

    def __init__(self, depth: int = 0) -> None:
        self.depth = depth or SPARE_DEPTH
        self._lock = threading.RLock()
        self._owner = threading.get_ident()  # the one thread that starts spares
        self._ready_only = False  # inside `deepened`: only spares whose imports are done
        self._waiting: list[Spare] = []
        self._registered = False
        self._libraries: bool | None = None  # may spares import LIBRARY_IMPORTS? None: not known yet
        self._probe: Spare | None = None

    @property
    def imports_libraries(self) -> bool | None:
        """Whether new spares import `LIBRARY_IMPORTS` (None: the probe has not answered yet)."""
        with self._lock:
            self._read_probe()
            return self._libraries

    @contextlib.contextmanager
    def deepened(self, depth: int) -> Iterator[None]:
        """Keep at least `depth` spares waiting inside the block (cases side by side, one per
        lane), and hand out only spares whose imports are done there: a lane that finds none
        starts its case cold, at its own priority, instead of waiting on a spare that imports at
        a lower one beside the other lanes' cases (on the H200's host, 25-57 s for the first
        round of eight). The spares started beyond the pool's own depth stay for the cases after."""
        with self._lock:
            previous, self.depth = self.depth, max(self.depth, depth)
            self._ready_only = True
        try:
            yield
        finally:
            with self._lock:
                self.depth = previous
                self._ready_only = False

    def _read_probe(self) -> bool:
        """Take the probe's verdict when it has one; whether the question is settled."""
        if self._probe is None:
            return True
        verdict = read_verdict(self._probe)
        if verdict is None:
            return False
        assert self._probe.verdict_path is not None
        self._probe.verdict_path.unlink(missing_ok=True)
        self._libraries, self._probe = verdict, None
        return True

    def prime(self) -> None:
        """Start the first spare now, before any case runs, importing the libraries too: the probe
        whose verdict decides whether later spares import them (see the module's doc). No-op once
        a spare or a verdict exists, and outside the pool's own thread."""
        if threading.get_ident() != self._owner:
            return
        with self._lock:
            if self._waiting or self._libraries is not None:
                return
            self._probe = self._start(libraries=True, probe=True)

    def __enter__(self) -> SparePool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    @property
    def waiting(self) -> Spare | None:
        """The spare the next case gets (the oldest waiting), or None."""
        return self._waiting[0] if self._waiting else None

    def ensure(self) -> None:
        """Start spares until `depth` wait (dead ones are replaced); none while the probe has not
        answered yet: the spares to start depend on its answer (called again, they start). Only
        in the pool's own thread (see the class's doc); elsewhere a no-op."""
        if threading.get_ident() != self._owner:
            return
        with self._lock:
            for spare in [s for s in self._waiting if s.process.poll() is not None]:
                self._waiting.remove(spare)
                self._discard(spare)
            if not self._read_probe():
                return
            while len(self._waiting) < self.depth:
                self._start(libraries=bool(self._libraries))

    def _start(self, libraries: bool, probe: bool = False) -> Spare:
        if not self._registered:
            atexit.register(self.shutdown)
            self._registered = True
        fd, name = tempfile.mkstemp(prefix="qlora-spare-", suffix=".log")
        env = child_env()
        command = [sys.executable, "-m", "qlora_core.process.spare", str(os.getpid())]
        verdict_path = Path(name).with_suffix(".verdict") if probe else None
        if libraries:
            command.append(LIBRARIES_FLAG)
        if verdict_path is not None:
            command.append(str(verdict_path))
        with os.fdopen(fd, "w") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                text=True,
            )
        spare = Spare(process, Path(name), env, libraries, verdict_path)
        self._waiting.append(spare)
        return spare

    def take(self) -> Spare | None:
        """The oldest waiting spare that is alive and was started under today's `child_env()`, or
        None; the ones that are not are ended. It leaves the pool. Inside `deepened`, only a
        spare whose imports are done: one still importing stays for a later case."""
        now = child_env()
        with self._lock:
            for spare in list(self._waiting):
                if spare.process.poll() is not None or not same_environment(spare.env, now):
                    self._waiting.remove(spare)
                    self._discard(spare)
                elif not self._ready_only or spare.ready:
                    self._waiting.remove(spare)
                    return spare
            return None

    def shutdown(self) -> None:
        """End every waiting spare."""
        with self._lock:
            while self._waiting:
                self._discard(self._waiting.pop(0))

    def _discard(self, spare: Spare) -> None:
        if spare is self._probe:  # ended before it answered: no proof
            self._libraries = read_verdict(spare) or False
            self._probe = None
        end(spare)


def read_verdict(probe: Spare) -> bool | None:
    """A probe's answer: True when its library imports created no CUDA context, False when they
    did or it died without answering, None while it is still importing."""
    assert probe.verdict_path is not None
    try:
        return probe.verdict_path.read_text().strip() == NO_CONTEXT
    except OSError:
        return False if probe.process.poll() is not None else None


def end(spare: Spare) -> None:
    """Kill a spare's process group and remove its log."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(spare.process.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        spare.process.wait(timeout=10)
    if spare.process.stdin is not None:
        with contextlib.suppress(OSError):
            spare.process.stdin.close()
    spare.log_path.unlink(missing_ok=True)
    if spare.verdict_path is not None:
        spare.verdict_path.unlink(missing_ok=True)


# Variables the runner's own process gains as a side effect, after a spare started, that do not
# change what the spare imported or how its case runs: torch writes TORCHINDUCTOR_CACHE_DIR into
# os.environ, set to its own default (/tmp/torchinductor_<user>, the same a child computes), when
# inductor's config is first imported in-process (peft does, e.g. for the session's parameter
# counts). Comparing them would discard every spare after the first such import.
SIDE_EFFECT_ENV: frozenset[str] = frozenset({"TORCHINDUCTOR_CACHE_DIR"})


def same_environment(spare_env: dict[str, str], now: dict[str, str]) -> bool:
    """Whether a spare started under `spare_env` may run a case due under `now` (the runner's
    `child_env()`): equal, apart from `SIDE_EFFECT_ENV` variables gained since."""
    changed = {k for k in spare_env.keys() | now.keys() if spare_env.get(k) != now.get(k)}
    return all(k in SIDE_EFFECT_ENV and k not in spare_env for k in changed)


def hand_over(spare: Spare, request: Path) -> bool:
    """Send `request` to `spare`; False if it died before it could be sent."""
    assert spare.process.stdin is not None
    try:
        spare.process.stdin.write(f"{request}\n")
        spare.process.stdin.close()
    except OSError:  # BrokenPipeError: it died after `take`
        end(spare)
        return False
    return True


# -- the spare's side (in the child process) ---------------------------------------------------


def serve_command_line(args: list[str]) -> None:
    """`python -m qlora_core.process.spare PID [--libraries [VERDICT]]`, as `SparePool._start` writes it:
    `serve` with those arguments."""
    libraries = args[1:2] == [LIBRARIES_FLAG]
    serve(int(args[0]), libraries, Path(args[2]) if libraries and len(args) > 2 else None)


def serve(parent_pid: int, libraries: bool = False, verdict_path: Path | None = None) -> None:
    """A spare's life: die with the parent, import at low priority, wait, run the case.
    `libraries`: import `LIBRARY_IMPORTS` too and check that they created no CUDA context; a spare
    that sees one ends at once. `verdict_path` (the probe's): write there what it saw
    (`NO_CONTEXT`, or the devices that have one)."""
    die_with_parent(parent_pid)
    arm_stack_dump()
    quiet_offline_kernel_notices()  # before bitsandbytes is imported
    restore = _lower_priority()
    t0 = time.perf_counter()
    for name in SPARE_IMPORTS:
        importlib.import_module(name)
    what = "device-free imports"
    if libraries:
        for name in LIBRARY_IMPORTS:
            importlib.import_module(name)
        contexts = primary_contexts()
        if verdict_path is not None:
            verdict_path.write_text(NO_CONTEXT if not contexts else f"contexts on {contexts}")
        if contexts:
            print(f"importing {', '.join(LIBRARY_IMPORTS)} created a CUDA context on {contexts}", flush=True)
            os._exit(3)
        what = f"with {', '.join(LIBRARY_IMPORTS)}: no CUDA context"
    imported_s = time.perf_counter() - t0
    print(f"{SPARE_READY} (pid {os.getpid()}, imports {imported_s:.1f} s, {what})", flush=True)
    line = sys.stdin.readline().strip()
    if not line:  # the parent closed the pipe: no case for this spare
        os._exit(0)
    restore()
    child_main(line, spare_import_s=imported_s)


def primary_contexts() -> list[int]:
    """The visible devices on which this process has a CUDA primary context (device memory
    NVML counts). Neither question creates one."""
    import torch  # the spare's own (imported already): the pool's parent imports no torch

    if not torch.cuda.is_available():
        return []
    # A private torch function (no public one answers without creating the context); untyped.
    has_context = torch._C._cuda_hasPrimaryContext  # type: ignore[attr-defined]
    return [i for i in range(torch.cuda.device_count()) if has_context(i)]


def _lower_priority() -> Callable[[], None]:
    """Add `SPARE_NICE` to this process's niceness if it may be undone; the undoing."""
    original = os.getpriority(os.PRIO_PROCESS, 0)
    soft, _hard = resource.getrlimit(resource.RLIMIT_NICE)
    # Lowering niceness back needs CAP_SYS_NICE (root) or an RLIMIT_NICE allowing `original`.
    may_restore = os.geteuid() == 0 or (soft == resource.RLIM_INFINITY or soft >= 20 - original)
    if not may_restore:
        return lambda: None
    os.setpriority(os.PRIO_PROCESS, 0, min(19, original + SPARE_NICE))
    return lambda: os.setpriority(os.PRIO_PROCESS, 0, original)


if __name__ == "__main__":
    serve_command_line(sys.argv[1:])
