"""Run a hand-picked list of cases, outside the matrix, into a run folder the reports can read.

    python -u tools/run_cases.py --gpu h200 --out runs/engines \\
        --case model=llama-3.1-8b,batch_size=4,seq_len=2048,engine=loop \\
        --case model=llama-3.1-8b,batch_size=4,seq_len=2048,engine=trainer

Each case runs in its own child as `pytest bench` runs it; its row is appended whole to
OUT/results.jsonl under the folder's lock as it ends. See docs/usage.md#hand-picked-cases.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qlora_core.cases.case import Case, CaseError  # noqa: E402
from qlora_core.cases.case_fields import case_from_text  # noqa: E402  (after the path)
from qlora_core.cases.families import Family  # noqa: E402
from qlora_core.measurement.result import Result, repeat_suffix  # noqa: E402
from qlora_core.process.oom_need import run_case_measuring_need  # noqa: E402
from qlora_core.process.request import RunOptions  # noqa: E402
from qlora_core.process.shared_options import (  # noqa: E402
    GPU,
    add_shared_options,
    case_timeout_problem,
    parse_gpu,
    parse_repeat,
)
from qlora_core.process.spare import SparePool  # noqa: E402
from reports.run.folder import (  # noqa: E402
    RunFolderInUseError,
    append_result,
    case_result_path,
    holding_run_dir,
    write_environment,
)


def parse_case(text: str) -> Case:
    """`field=value,field=value` -> a validated Case (every problem named at once)."""
    return case_from_text(text)


def summary(result: Result) -> str:
    speed = f"{result.training.tokens_per_s:,.0f} tok/s" if result.training.tokens_per_s else "-"
    peak = f"peak {result.memory.peak_alloc_gib:.2f} GiB" if result.memory.peak_alloc_gib else ""
    name = result.case_id + repeat_suffix(result.repeat)
    return f"{name}: {result.status} {speed} {peak} {result.reason[:200]}".rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # The default profile stays cpu here (pytest bench: auto), so a GPU is used only when named.
    add_shared_options(parser.add_argument, defaults={GPU.flag: "cpu"})
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="the run folder")
    parser.add_argument(
        "--case", action="append", required=True, metavar="FIELD=VALUE,...", help="a case (repeatable)"
    )
    args = parser.parse_args(argv)
    problems: list[str] = []
    profile, _, gpu_problem = parse_gpu(args.gpu)
    repeat, repeat_problem = parse_repeat(args.repeat)
    problems += [p for p in (gpu_problem, case_timeout_problem(args.case_timeout), repeat_problem) if p]
    cases: list[Case] = []
    for text in args.case:
        try:
            cases.append(parse_case(text))
        except CaseError as error:
            problems += [f"--case {text!r}: {problem}" for problem in error.problems]
    if problems or profile is None:
        print("run_cases options:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    options = RunOptions(profile=profile.name, timeout_s=args.case_timeout, families=str(Family.HAND_PICKED))
    try:
        with holding_run_dir(args.out):
            write_environment(args.out, {"commands": [shlex.join([sys.executable, *sys.argv])]})
            run_all(args.out, cases, options, repeat or 1, not args.no_oom_rerun)
    except RunFolderInUseError as error:
        print(f"run_cases: {error}", file=sys.stderr)
        return 2
    return 0


def run_all(out: Path, cases: list[Case], options: RunOptions, repeats: int, oom_rerun: bool) -> None:
    """Each case `repeats` times, round by round; each row appended as soon as it ends."""
    with SparePool() as spares:  # no spare outlives the run, Ctrl-C included
        spares.prime()
        for repeat, case in ((r, c) for r in range(repeats) for c in cases):
            path = case_result_path(out, case.hash, repeat)
            run = dataclasses.replace(options, repeat=repeat)
            result = run_case_measuring_need(case, run, path, oom_rerun, spares)
            append_result(out, result)
            print(summary(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
