"""What an OOM needs: a case that ran out of memory under a cap, rerun uncapped in a fresh child,
its memory folded into the capped row as the `needed_*` fields.

The parent side only: callers (the pytest plugin's session, `tools/run_cases.py`) call
`run_case_measuring_need` instead of `runner.run_case`. No torch is imported here.
See docs/oom-needs.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from qlora_core.cases.case import Case
from qlora_core.measurement.result import NEEDED_OF, Result, Status, repeat_suffix, write_atomic
from qlora_core.process.request import RunOptions
from qlora_core.process.runner import OnWait, run_case
from qlora_core.process.spare import SparePool

UNCAPPED_SUFFIX = "-uncapped"


def uncapped_file_name(case_hash: str, repeat: int = 0) -> str:
    """The rerun's Result file beside the case's own in cases/: `<hash>[-rN]-uncapped.json`."""
    return f"{case_hash}{repeat_suffix(repeat)}{UNCAPPED_SUFFIX}.json"


def why_no_rerun(result: Result) -> str | None:
    """Why `result` needs no uncapped rerun; None when it does (an OOM under a cap the host GPU
    exceeds, not yet rerun). The CPU has no cap, so a CPU row is never rerun."""
    if result.status != Status.OOM.value:
        return f"status {result.status}, not oom"
    if result.weights.computed_weight_bytes is not None:
        # Judged from the weights' exact bytes without loading (no 16-bit checkpoint exists to
        # load: models.prequantized); uncapped it would only be judged again.
        return "judged from computed weight bytes, not measured: there is nothing to rerun"
    if result.needed.needed_status is not None:
        return f"already rerun uncapped ({result.needed.needed_status} on {result.needed.needed_on})"
    if result.hardware.memory_cap_gib is None:
        return "it ran without a memory cap: the OOM is the device's own"
    if (
        result.hardware.gpu_total_gib is not None
        and result.hardware.gpu_total_gib <= result.hardware.memory_cap_gib
    ):
        return (
            f"the host GPU ({result.hardware.gpu_total_gib:.1f} GiB) has no more memory than the cap"
            f" ({result.hardware.memory_cap_gib:.1f} GiB)"
        )
    return None


def uncapped_options(options: RunOptions) -> RunOptions:
    """The rerun's options: no cap (nor a lane's), fixed steps, no profiler window, no one-shot
    fault (a fault injected into the capped run fires there only)."""
    return dataclasses.replace(
        options,
        uncapped=True,
        memory_cap_gib=None,
        lane_share_gib=None,
        adaptive_steps=False,
        inject_fault="",
    )


def fold_need(capped: Result, uncapped: Result) -> None:
    """Copy the uncapped rerun's memory into the capped row's `needed_*` fields (in place)."""
    capped.needed.needed_status = uncapped.status
    capped.needed.needed_on = uncapped.hardware.gpu_name or uncapped.hardware.device or "unknown device"
    capped.set_fields({needed: uncapped.get_field(measured) for needed, measured in NEEDED_OF.items()})


def measure_need(
    case: Case,
    options: RunOptions,
    capped: Result,
    result_path: Path | None,
    spares: SparePool | None = None,
    on_wait: OnWait | None = None,
) -> Result:
    """Rerun `case` uncapped in a fresh child, fold its memory into `capped` (in place; also
    rewritten to `result_path`, the capped run's file, when given) and return the rerun's Result
    (stored as `<hash>-uncapped.json` beside `result_path`). `on_wait`: `runner.run_case`'s."""
    rerun_path = None
    if result_path is not None:
        rerun_path = result_path.with_name(uncapped_file_name(capped.case_hash, options.repeat))
    uncapped = run_case(case, uncapped_options(options), rerun_path, spares, on_wait=on_wait)
    fold_need(capped, uncapped)
    if result_path is not None:
        write_atomic(result_path, capped.to_json())
    return uncapped


def run_case_measuring_need(
    case: Case,
    options: RunOptions,
    result_path: Path | None = None,
    rerun: bool = True,
    spares: SparePool | None = None,
    on_wait: OnWait | None = None,
) -> Result:
    """`runner.run_case` (in a warm spare from `spares` when given), then, when the case ran out of
    memory under a cap the host GPU exceeds and `rerun` is on (`--no-oom-rerun` turns it off), its
    uncapped rerun folded in. `on_wait`: `runner.run_case`'s, for both runs."""
    result = run_case(case, options, result_path, spares, on_wait=on_wait)
    if rerun and why_no_rerun(result) is None:
        measure_need(case, options, result, result_path, spares, on_wait)
    return result
