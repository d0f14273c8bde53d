"""Run a hand-picked list of cases, outside the matrix, into a run folder the reports can read.

For a measurement the matrix does not plan (an engine comparison at one point, a repro of one
case): each case runs in its own child exactly as `pytest bench` runs it, its row is appended whole
to `OUT/results.jsonl` as soon as it finishes (nothing measured is lost if the command is killed),
under the folder's lock (`reports.run_folder`), and `python -m reports render OUT` works on it.

    python -u tools/run_cases.py --gpu h200 --out runs/engines \\
        --case model=llama-3.1-8b,batch_size=4,seq_len=2048,engine=loop \\
        --case model=llama-3.1-8b,batch_size=4,seq_len=2048,engine=trainer

A field's value is read as JSON when it parses (4, true, 2e-4), else as a string. `--repeat N`
runs every case N times, each in a fresh child, round by round (all cases, then all again), so
drift hits every case alike; the reports fold the repeats (median tokens/s, its spread).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qlora_core.process.oom_need import run_case_measuring_need  # noqa: E402
from qlora_core.process.request import DEFAULT_TIMEOUT_S, RunOptions  # noqa: E402
from qlora_core.process.spare import SparePool  # noqa: E402
from qlora_core.result import Result, repeat_suffix  # noqa: E402  (after the path)
from qlora_core.spec import Case, CaseError  # noqa: E402
from reports.run_folder import (  # noqa: E402
    RunFolderInUseError,
    append_result,
    case_result_path,
    holding_run_dir,
    write_environment,
)


def parse_case(text: str) -> Case:
    """`field=value,field=value` -> a validated Case (every problem named at once)."""
    fields: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        key, sep, raw = item.partition("=")
        if not sep:
            raise CaseError([f"{item!r} is not FIELD=VALUE"])
        try:
            fields[key.strip()] = json.loads(raw)
        except ValueError:
            fields[key.strip()] = raw
    return Case.from_dict(fields)


def summary(result: Result) -> str:
    speed = f"{result.training.tokens_per_s:,.0f} tok/s" if result.training.tokens_per_s else "-"
    peak = f"peak {result.memory.peak_alloc_gib:.2f} GiB" if result.memory.peak_alloc_gib else ""
    name = result.case_id + repeat_suffix(result.repeat)
    return f"{name}: {result.status} {speed} {peak} {result.reason[:200]}".rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", default="cpu", metavar="PROFILE", help="GPU profile. Default: cpu.")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="the run folder")
    parser.add_argument("--case", action="append", required=True, metavar="FIELDS", help="repeatable")
    parser.add_argument("--case-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS")
    parser.add_argument(
        "--repeat", type=int, default=1, metavar="N", help="fresh-process runs of each case. Default: 1."
    )
    parser.add_argument(
        "--no-oom-rerun",
        action="store_true",
        help="do not rerun a case that ran out of memory under an emulated cap uncapped on the host GPU",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        print(f"run_cases: --repeat {args.repeat} must be an integer >= 1", file=sys.stderr)
        return 2
    try:
        cases = [parse_case(text) for text in args.case]
    except CaseError as error:
        print(f"run_cases: {error}", file=sys.stderr)
        return 2
    try:
        with holding_run_dir(args.out):
            write_environment(args.out, {"commands": [shlex.join([sys.executable, *sys.argv])]})
            run_all(args, cases)
    except RunFolderInUseError as error:
        print(f"run_cases: {error}", file=sys.stderr)
        return 2
    return 0


def run_all(args: argparse.Namespace, cases: list[Case]) -> None:
    """Each case `args.repeat` times, round by round; each row appended as soon as it ends."""
    with SparePool() as spares:  # no spare outlives the run, Ctrl-C included
        spares.prime()
        for repeat, case in ((r, c) for r in range(args.repeat) for c in cases):
            options = RunOptions(
                profile=args.gpu, timeout_s=args.case_timeout, families="hand-picked", repeat=repeat
            )
            path = case_result_path(args.out, case.hash, repeat)
            result = run_case_measuring_need(case, options, path, not args.no_oom_rerun, spares)
            append_result(args.out, result)
            print(summary(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
