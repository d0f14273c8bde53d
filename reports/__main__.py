"""`python -m reports render RUN_DIR`: re-render a run folder's claims.md, tables.md and plots.

Exit codes: 0 rendered; 2 usage error, missing folder, or a folder without results.jsonl.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from reports.render import RunFolderError, render_run

EXIT_OK = 0
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the process exit code."""
    args = build_parser().parse_args(argv)  # exits 2 itself on a usage error
    if args.command == "render":
        try:
            written = render_run(args.run_dir)
        except RunFolderError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        for name, path in written.items():
            print(f"{name}: {path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
