"""``factorch`` entry point: parse, dispatch, and turn bad input into one ``error:`` line (exit 2)."""
from __future__ import annotations

import argparse
import re
import sys
from typing import Optional, Sequence

from factorch import __version__
from factorch.measure import results
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
        print(f"error: {error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        results.record_command(None)  # a later file of this process names its own command


def error_message(e: BaseException) -> str:
    """The one line printed for ``e``: the first line of its message. An error raised in a
    DataLoader worker reaches us re-raised as "Caught ValueError in DataLoader worker process 0"
    followed by the worker's traceback: its own message (the file, the value) is that
    traceback's last "ValueError: ..." line."""
    text = str(e).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        name = re.escape(type(e).__name__)
        own = [m.group(1) for m in re.finditer(rf"^(?:[\w.]+\.)?{name}: (.+)$", text, re.MULTILINE)]
        if own:
            text = own[-1]
    return text.splitlines()[0] if text else type(e).__name__


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
