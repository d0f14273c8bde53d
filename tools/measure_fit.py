"""Measure the fit advisor's answer for real: the setting, and the smallest change predicted to fit
when the setting does not, each run on this machine as `pytest bench` runs a case, then the
advisor's report with measured beside predicted.

    CUDA_VISIBLE_DEVICES=0 python -u tools/measure_fit.py --gpu t4 --model llama-3.1-8b \\
        --batch-size 4 --seq-len 2048 --gradient-checkpointing off --optimizer adamw_8bit \\
        --out runs/fit-measure

The options are `python -m reports fit`'s (`reports.fit.query`), plus `--out` (a run folder:
rows appended whole to results.jsonl as each case ends, under the folder's lock; `python -m reports
render OUT` reads it) and `--case-timeout`. A case that runs out of memory under an emulated cap
is rerun uncapped on the host GPU (`qlora_core.process.oom_need`) and reports what it needed.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qlora_core.cases.case import Case  # noqa: E402
from qlora_core.cases.families import Family  # noqa: E402  (after the path)
from qlora_core.process.oom_need import run_case_measuring_need  # noqa: E402
from qlora_core.process.request import RunOptions  # noqa: E402
from qlora_core.process.shared_options import CASE_TIMEOUT, add_shared_options, case_timeout_problem  # noqa: E402
from qlora_core.process.spare import SparePool  # noqa: E402
from reports.fit.advisor import advise, measured_figures, render  # noqa: E402
from reports.fit.query import AdvisorError, add_query_options, query_case  # noqa: E402
from reports.run.folder import (  # noqa: E402
    ENVIRONMENT_JSON,
    RunFolderInUseError,
    append_result,
    case_result_path,
    holding_run_dir,
    write_environment,
)

# This tool's wait per case, shorter than pytest bench's (`request.DEFAULT_TIMEOUT_S`).
CASE_TIMEOUT_S = 900.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/measure_fit.py", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    add_query_options(parser.add_argument)
    parser.add_argument("--out", type=Path, required=True, metavar="OUT", help="the run folder to write")
    add_shared_options(
        parser.add_argument, defaults={CASE_TIMEOUT.flag: CASE_TIMEOUT_S}, only=(CASE_TIMEOUT,)
    )
    return parser


def measure(
    cases: list[Case], profile: str, out: Path, timeout_s: float
) -> dict[str, tuple[str, float | None]]:
    """Run `cases` into the run folder `out`; case id -> (status, measured device peak GiB)."""
    measured: dict[str, tuple[str, float | None]] = {}
    with SparePool() as spares:  # no spare outlives the run, Ctrl-C included
        spares.prime()
        for case in cases:
            options = RunOptions(profile=profile, timeout_s=timeout_s, families=str(Family.FIT_ADVISOR))
            path = case_result_path(out, case.hash)
            result = run_case_measuring_need(case, options, path, spares=spares)
            append_result(out, result)
            measured[case.id] = measured_figures(result.row())
            status, peak = measured[case.id]
            shown = "-" if peak is None else f"{peak:.2f}"
            print(f"measured {case.id}: {status}, device peak {shown} GiB", flush=True)
    return measured


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        profile, setting = query_case(args)
        advice = advise(profile, setting, args.runs)  # every input checked before a case runs
        if problem := case_timeout_problem(args.case_timeout):
            raise AdvisorError(problem)
    except AdvisorError as error:
        print(f"measure_fit: {error}", file=sys.stderr)
        return 2
    try:
        with holding_run_dir(args.out):
            if not (args.out / ENVIRONMENT_JSON).exists():
                write_environment(args.out, {"commands": [shlex.join([sys.executable, *sys.argv])]})
            measured = measure(advice.to_measure(), profile.name, args.out, args.case_timeout)
    except RunFolderInUseError as error:
        print(f"measure_fit: {error}", file=sys.stderr)
        return 2
    print(render(advice, args.show_held_out, measured))
    return 0


if __name__ == "__main__":
    sys.exit(main())
