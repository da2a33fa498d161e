"""``python -m detops``: verify ops, benchmark them, train and run the detector."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .commands import COMMANDS, load_command


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The command named in ``argv``: the top-level parser has only flags, so it is the
    first argument that does not start with '-'."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: every command is listed, but only the one ``argv`` chooses is
    imported and given its full parser (all of them when ``argv`` is None)."""
    chosen = None if argv is None else _chosen_command(argv)
    parser = argparse.ArgumentParser(
        prog="detops",
        description="Vetted FCOS tensor ops: verify implementations against NumPy references, "
        "benchmark them, train and run the FCOS detector.",
    )
    parser.add_argument("--version", action="version", version=f"detops {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_line in COMMANDS.items():
        if argv is None or name == chosen:
            load_command(name).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_line, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
