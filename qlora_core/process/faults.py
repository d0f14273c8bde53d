"""Test-only fault injection into the child (`KIND@STAGE`, fired as the child enters STAGE) and
the `slowdown` knob's parsing: `parse_fault`, `fire`, `for_rank`, `parse_slowdown`.

See docs/design.md#the-childs-stages.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import time
from dataclasses import dataclass

from qlora_core.cases.case import Case, CaseError
from qlora_core.process.stages import STAGES

FAULT_KINDS: dict[str, str] = {
    "sigkill": "the child sends itself SIGKILL (as the kernel's OOM killer does)",
    "sigsegv": "a real segmentation fault: a read of address 0",
    "exit": "os._exit(3): the interpreter leaves without unwinding",
    "hang": "the child sleeps until the parent's timeout kills it",
    "oom": "raises torch.OutOfMemoryError, as the CUDA caching allocator does",
    "error": "raises KeyError from our own code: a bug (crashed, with its traceback)",
    "cuda-assert": "a real device-side assert: an out-of-range index on the GPU (CUDA only)",
}
CUDA_ONLY_KINDS: frozenset[str] = frozenset({"cuda-assert"})
_HANG_S = 10**6


@dataclass(frozen=True)
class Fault:
    """One fault to inject: what happens, and at the start of which stage."""

    kind: str
    stage: str
    rank: int | None = None
    """The one rank of a multi-GPU case that fires it; None: every rank (a single process is rank 0)."""

    def __str__(self) -> str:
        return f"{self.kind}@{self.stage}" + ("" if self.rank is None else f"@rank{self.rank}")


def parse_fault(spec: str) -> Fault | None:
    """`KIND@STAGE` -> Fault; "" -> None. A CaseError lists the allowed kinds and stages."""
    if not spec:
        return None
    kind, _, rest = spec.partition("@")
    stage, _, selector = rest.partition("@")
    problems = []
    rank = None
    if selector:
        number = selector.removeprefix("rank")
        if not selector.startswith("rank") or not number.isdigit():
            problems.append(f"rank selector {selector!r} in {spec!r} must be rankN, e.g. rank1")
        else:
            rank = int(number)
    if kind not in FAULT_KINDS:
        problems.append(f"fault kind {kind!r} in {spec!r} is not one of {sorted(FAULT_KINDS)}")
    if stage not in STAGES:
        problems.append(f"fault stage {stage!r} in {spec!r} is not one of {list(STAGES)}")
    if problems:
        raise CaseError(problems)
    return Fault(kind, stage, rank)


def for_rank(spec: str, rank: int) -> str:
    """The fault `spec` if rank `rank` fires it, else "" (a rank selector names another rank)."""
    fault = parse_fault(spec)
    return spec if fault is not None and fault.rank in (None, rank) else ""


def fire(fault: Fault) -> None:
    """Inflict `fault` on this process. The kill kinds do not return; the others raise."""
    if fault.kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault.kind == "sigsegv":
        ctypes.string_at(0)  # dereferences NULL: the kernel delivers SIGSEGV
    elif fault.kind == "exit":
        os._exit(3)
    elif fault.kind == "hang":
        time.sleep(_HANG_S)
    elif fault.kind == "oom":
        import torch

        raise torch.OutOfMemoryError(f"injected fault {fault}: out of memory")
    elif fault.kind == "error":
        lookup: dict[str, int] = {}
        lookup[f"injected fault {fault}"]  # a KeyError raised by our code, as a bug would be
    elif fault.kind == "cuda-assert":
        _device_side_assert()
    raise AssertionError(f"fault {fault} did not take effect")


def _device_side_assert() -> None:
    """Index a CUDA tensor out of range: the gather kernel's bounds check asserts on the device."""
    import torch

    values = torch.zeros(4, device="cuda")
    index = torch.tensor([1 << 20], device="cuda")
    values[index].sum().item()  # .item() synchronizes, so the assert surfaces here
    torch.cuda.synchronize()


SLOWDOWN_KEY = "slowdown"
FAULT_KEY = "fault"
EXTRA_KNOBS: tuple[str, ...] = (FAULT_KEY, SLOWDOWN_KEY)
"""The test-only knobs a `Case.extra` pair may name."""
SLOWDOWN_PCT_RANGE = (0.0, 100.0)
"""PCT must lie in (0, 100]: a positive slowdown of at most doubling the step."""


def parse_slowdown(spec: str) -> float | None:
    """ "PCT" -> PCT as a float; "" -> None. A CaseError names the allowed values."""
    if spec == "":
        return None
    low, high = SLOWDOWN_PCT_RANGE
    try:
        pct = float(spec)
    except ValueError:
        pct = math.nan
    if not low < pct <= high:  # NaN fails too
        raise CaseError([f"slowdown {spec!r} must be a percentage in ({low:g}, {high:g}], e.g. '10'"])
    return pct


def slowdown_of(case: Case) -> float | None:
    """The case's slowdown percentage, None without the knob; a CaseError for a bad one."""
    pct = parse_slowdown(dict(case.extra).get(SLOWDOWN_KEY, ""))
    if pct is not None and case.warmup_steps < 1:
        raise CaseError(
            [f"slowdown {pct:g}% calibrates on the warm-up steps: warmup_steps must be >= 1, got 0"]
        )
    return pct
