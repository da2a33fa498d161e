"""``python -m detops``: verify ops, benchmark them, train and run the detector."""

from __future__ import annotations

import argparse
import sys

from .commands import load_command_modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detops",
        description="Vetted FCOS tensor ops: verify implementations against NumPy references, "
        "benchmark them, train and run the FCOS detector.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in load_command_modules():
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
