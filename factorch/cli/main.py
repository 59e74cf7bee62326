"""``factorch`` entry point: parse, dispatch, and turn bad input into one ``error:`` line (exit 2)."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from factorch import __version__
from factorch.cli import results
from factorch.cli.commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factorch", description="Compress PyTorch models with tensor decompositions.")
    parser.add_argument("--version", action="version", version=f"factorch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns the exit code (2 for bad input, with one ``error:`` line on stderr)."""
    args = build_parser().parse_args(argv)  # argparse itself exits 2 on bad syntax
    results.record_command(argv if argv is not None else sys.argv[1:])  # result files name the command
    try:
        return int(args.run(args) or 0)
    except (ValueError, OSError, RuntimeError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
