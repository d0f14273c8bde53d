"""The reports command line, for stored run folders (no GPU needed): `render`, `baseline`, `merge`,
`gate`, `fit` and `claims-matrix` (`python -m reports --help`).
See docs/usage.md#reports-from-stored-runs.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from reports.claims.matrix import write_claims_matrix
from reports.fit.advisor import run_advisor
from reports.fit.query import AdvisorError, add_query_options, query_case
from reports.gate.baseline import BASELINE_DIFF_MD, BaselineError, save_run_baseline
from reports.gate.baseline_choice import save_target
from reports.gate.thresholds import Thresholds, add_threshold_options, resolve_thresholds
from reports.gate.verdict import gate
from reports.render import render_run
from reports.run.completeness import completing_command, folder_incompleteness
from reports.run.folder import (
    ENVIRONMENT_JSON,
    MEASUREMENTS_DIR,
    RESULTS_JSONL,
    SchemaError,
    check_environment,
    measurement_paths,
    read_environment,
    read_results,
)
from reports.run.frame import RunFolderError, check_run_dir, load_run
from reports.run.merge import MergeError, merge_runs

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reports", description="qlora-bench reports")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    render = commands.add_parser(
        "render",
        help="write claims.md, tables.md and plots/*.png into a run folder from its results",
        description="Re-render the reports of a run folder (results.jsonl, environment.json, measurements/).",
    )
    render.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run folder (holds results.jsonl)")
    save = commands.add_parser("baseline", help="store a run folder's metrics as a baseline JSON")
    save.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    save.add_argument(
        "path",
        type=Path,
        metavar="PATH",
        help="the baseline JSON to write, or a folder of baselines to write <profile>-<tier>-<gpu>.json into",
    )
    save.add_argument(
        "--command",
        dest="command_text",
        default=None,
        help="the command that produced the run (default: environment.json's)",
    )
    merge = commands.add_parser(
        "merge",
        help="merge the run folders of a sharded run (--shard I/N) into one, and render it",
        description="Merge run folders of one profile and tier into a new run folder: results.jsonl"
        " union, cases/ and measurements/ joined, every shard's environment kept; then claims.md,"
        " tables.md and plots/ as `render` writes them.",
    )
    merge.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="the shards' run folders")
    merge.add_argument("--out", type=Path, required=True, metavar="MERGED", help="the new run folder")
    merge.add_argument(
        "--partial",
        action="store_true",
        help="merge even when cases of the matrix are in no folder; claims.md names them",
    )
    check = commands.add_parser("gate", help="compare a run folder with a baseline; exit 1 on regressions")
    check.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    check.add_argument(
        "baseline",
        type=Path,
        metavar="BASELINE",
        help="a baseline JSON, or a folder of them: the one of the run's profile, tier and GPU is used",
    )
    check.add_argument(
        "--pyproject",
        type=Path,
        default=Path("pyproject.toml"),
        help="threshold overrides from this file's [tool.qlora-bench] table, if it has one"
        " (default: ./pyproject.toml)",
    )
    check.add_argument(
        "--selected-only",
        action="store_true",
        help="the run selected a part of the matrix (pytest bench -k): judge its cases only, listing"
        " the baseline's others as not selected instead of failing them as missing",
    )
    add_threshold_options(check.add_argument)  # the same options as `pytest bench`
    matrix = commands.add_parser(
        "claims-matrix",
        help="a claims x runs table of every run folder under ROOT (verdict and figure per cell)",
        description="Evaluate the claims on every run folder at or under ROOT (nested ones included)"
        " and write one markdown table: a row per claim, a column per run with its profile and GPU.",
    )
    matrix.add_argument("root", type=Path, metavar="ROOT", help="a run folder, or a folder holding them")
    matrix.add_argument("--out", type=Path, required=True, metavar="FILE", help="the markdown file to write")
    advisor = commands.add_parser(
        "fit",
        help="does a QLoRA setting fit a GPU as given; if not, the smallest change that makes it fit",
        description="Predict the device peak of a QLoRA setting (the matrix's Case fields) on a GPU"
        " from a model fitted to measured rows, and of the smallest changes of the lesson's OOM ladder"
        " (batch with accumulation, checkpointing, sequence) until one fits; with the model's held-out"
        " error on those rows. tools/measure_fit.py (same options) runs the answer for real.",
    )
    add_query_options(advisor.add_argument)
    advisor.add_argument("--measure", type=Path, default=None, metavar="OUT", help=argparse.SUPPRESS)
    return parser


def readable_run_dir(run_dir: Path) -> Path:
    """`run_dir` when it is a run folder whose files a report reads are readable; RunFolderError
    naming each file that is not (no raw exception text reaches the user)."""
    run_dir = Path(run_dir)
    if (run_dir / ENVIRONMENT_JSON).is_file() and not (run_dir / RESULTS_JSONL).exists():
        raise RunFolderError(
            f"{run_dir} holds no finished run yet (no {RESULTS_JSONL}: its session stopped before its"
            f" first case ended); run them with: {completing_command(run_dir)}"
        )
    run_dir = check_run_dir(run_dir)
    problems = [_environment_problem(run_dir), _results_problem(run_dir), *_measurement_problems(run_dir)]
    found = [p for p in problems if p]
    if found:
        raise RunFolderError(f"{run_dir} cannot be read as a qlora-bench run folder: {'; '.join(found)}")
    return run_dir


def _environment_problem(run_dir: Path) -> str | None:
    path = run_dir / ENVIRONMENT_JSON
    if not path.exists():
        return None  # optional: older folders, hand-made ones
    text, problem = _read_text(path, ENVIRONMENT_JSON)
    if problem:
        return problem
    try:
        environment = json.loads(text)
    except ValueError as exc:
        return f"{ENVIRONMENT_JSON} is not JSON ({str(exc).splitlines()[0]})"
    if not isinstance(environment, dict):
        return f"{ENVIRONMENT_JSON} is not a JSON object"
    try:
        check_environment(environment)
    except ValueError as exc:  # a newer schema, or a version that is none
        return str(exc)
    return None


def _results_problem(run_dir: Path) -> str | None:
    path = run_dir / RESULTS_JSONL
    text, problem = _read_text(path, RESULTS_JSONL)
    if problem:
        return problem
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        stored = read_results(path)
    except SchemaError as exc:
        return str(exc)
    if lines and not stored.results:
        return f"{RESULTS_JSONL} holds {len(lines)} lines and no result row of qlora-bench"
    return None


def _measurement_problems(run_dir: Path) -> list[str]:
    problems = []
    for path in measurement_paths(run_dir):
        name = f"{MEASUREMENTS_DIR}/{path.name}"
        text, problem = _read_text(path, name)
        if not problem:
            try:
                pd.read_csv(io.StringIO(text))
            except ValueError as exc:  # pandas' parser and empty-data errors
                problem = f"{name} is not a CSV table ({str(exc).splitlines()[0]})"
        if problem:
            problems.append(problem)
    return problems


def _read_text(path: Path, name: str) -> tuple[str, str | None]:
    """A file's text, or why it cannot be read (named `name`)."""
    try:
        return path.read_text(encoding="utf-8"), None
    except UnicodeDecodeError as exc:
        return "", f"{name} is not text (byte {exc.object[exc.start]:#04x} at {exc.start} is not UTF-8)"
    except OSError as exc:
        return "", f"{name} cannot be read ({exc.strerror})"


def _print_incomplete(run_dir: Path) -> None:
    """The incomplete line claims.md now starts with, on the console too."""
    missing = folder_incompleteness(run_dir, read_environment(run_dir))
    if missing:
        print(missing.line())


def _gate(
    run_dir: Path,
    baseline: Path,
    thresholds: Thresholds,
    allow_noisy: bool,
    selected_only: bool = False,
    require_speed: bool = False,
) -> int:
    run = load_run(readable_run_dir(run_dir))
    selected = set(run.results["case_id"]) if selected_only and not run.results.empty else None
    report = gate(baseline, run, thresholds, run_dir, allow_noisy, selected, require_speed)
    if report.baseline_note:
        print(report.baseline_note)
    if report.speed_not_compared:
        print(report.speed_not_compared)
    for flag in report.flags:
        print(f"flag: {flag}")
    for noisy in report.too_noisy:
        print(f"{noisy.verdict}: {noisy.case_id}: {noisy.why}")
    for line in report.failures:
        print(f"FAIL {line}")
    print(f"{report.summary} ({run_dir / BASELINE_DIFF_MD})")
    return EXIT_OK if report.passed else EXIT_REGRESSION


def _without_measure(argv: Sequence[str] | None) -> list[str]:
    """The fit command's arguments without `fit` and `--measure OUT` (for the tool's command)."""
    args = list(argv if argv is not None else sys.argv[1:])[1:]
    for i, arg in enumerate(args):
        if arg == "--measure":
            return args[:i] + args[i + 2 :]
        if arg.startswith("--measure="):
            return args[:i] + args[i + 1 :]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the process exit code."""
    args = build_parser().parse_args(argv)  # exits 2 itself on a usage error
    try:
        if args.command == "render":
            for name, path in render_run(readable_run_dir(args.run_dir)).items():
                print(f"{name}: {path}")
            for note in read_results(args.run_dir / RESULTS_JSONL).notes:
                print(f"note: {note}")
            _print_incomplete(args.run_dir)
        elif args.command == "baseline":
            run = load_run(readable_run_dir(args.run_dir))
            command = args.command_text or run.environment.get("command", "")
            path = save_target(args.path, run)
            saved = save_run_baseline(path, run, command=command)
            print(f"baseline written: {path} ({len(saved['cases'])} cases)")
        elif args.command == "merge":
            command = shlex.join(["python", "-m", "reports", *(argv if argv is not None else sys.argv[1:])])
            for run_dir in args.run_dirs:
                readable_run_dir(run_dir)
            report = merge_runs(args.run_dirs, args.out, partial=args.partial, command=command)
            for flag in report.flags:
                print(f"flag: {flag}")
            if report.missing:
                print(f"partial: {len(report.missing)} case(s) missing: {', '.join(report.missing)}")
            folders = len(report.sources)
            print(f"merged {folders} folders: {report.cases} cases, {report.runs} runs -> {report.out}")
            for name, path in render_run(args.out).items():
                print(f"{name}: {path}")
        elif args.command == "gate":
            thresholds = resolve_thresholds(args.pyproject, lambda name: getattr(args, name))
            return _gate(
                args.run_dir,
                args.baseline,
                thresholds,
                args.allow_noisy,
                args.selected_only,
                args.require_speed,
            )
        elif args.command == "claims-matrix":
            print(f"claims matrix: {write_claims_matrix(args.root, args.out)}")
        elif args.command == "fit":
            if args.measure is not None:
                # The reports read stored runs; measuring runs cases on this machine's GPU.
                command = shlex.join(["python", "tools/measure_fit.py", *_without_measure(argv), "--out"])
                raise AdvisorError(f"--measure moved to its own tool: {command} {args.measure}")
            profile, setting = query_case(args)
            print(run_advisor(profile, setting, args.runs, args.show_held_out))
    except (RunFolderError, BaselineError, MergeError, AdvisorError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # a file that vanished or cannot be read or written past the checks
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
