"""``python -m detops``: verify ops, benchmark them, train and run the detector."""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from ._errors import InputError
from ._interrupt import catching, raised_during_interrupt
from .commands import COMMANDS, load_command


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The command named in ``argv``: the top-level parser has only flags, so it is the
    first argument that does not start with '-'."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


class _OneLineErrors(argparse.ArgumentParser):
    """argparse's parser with a usage error on one line (``prog: error: message``), as
    every other error of the commands, instead of the usage block then the message."""

    def error(self, message: str) -> NoReturn:
        self._fail(self.prog, message)

    def parse_args(self, args=None, namespace=None):
        """As argparse's, with an unknown option named by its command's prog."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            self._fail(prog, f"unrecognized arguments: {' '.join(extra)}")
        return parsed

    def _fail(self, prog: str, message: str) -> NoReturn:
        self.exit(2, f"{prog}: error: {message} (see {prog} --help)\n")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: every command is listed, but only the one ``argv`` chooses is
    imported and given its full parser (all of them when ``argv`` is None)."""
    chosen = None if argv is None else _chosen_command(argv)
    parser = _OneLineErrors(
        prog="detops",
        description="Vetted FCOS tensor ops: verify implementations against NumPy references, "
        "benchmark them, train and run the FCOS detector.",
    )
    parser.add_argument("--version", action="version", version=f"detops {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an unexpected error or of Ctrl-C",
    )
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_OneLineErrors
    )
    for name, help_line in COMMANDS.items():
        if argv is None or name == chosen:
            load_command(name).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_line, add_help=False)
    return parser


def check_output_file(option: str, path: str) -> None:
    """A file a command will write: its folder must exist. Checked before a long run, so a
    typo does not surface only at the end of it."""
    from pathlib import Path

    target = Path(path).expanduser()
    if target.is_dir():
        raise CommandError(f"{option} {path}: is a folder, not a file")
    if not target.parent.is_dir():
        raise CommandError(f"{option} {path}: the folder {target.parent} does not exist")


class CommandError(Exception):
    """A usage or input error found by a command: ``main`` prints ``detops CMD: error: MSG``
    on one line (no traceback) and exits 2."""


def input_error_message(error: Exception) -> str:
    """The message of a :class:`CommandError` or an :class:`~detops._errors.InputError`. An
    input error raised in a DataLoader worker comes back with the worker's traceback in its
    message (torch re-raises it so); its last line holds the original message."""
    message = str(error)
    if isinstance(error, InputError) and message.startswith("Caught "):
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    return message


def _one_line(text: str, limit: int = 1200) -> str:
    """The first line of ``text``, cut to ``limit`` characters."""
    lines = text.strip().splitlines()
    line = lines[0] if lines else ""
    if len(lines) > 1:
        line += " ..."
    return line if len(line) <= limit else line[: limit - 3] + "..."


def main(argv: Sequence[str] | None = None, *, program: bool = False) -> int:
    """Run ``detops ARGV``; returns the exit status.

    ``program``: the process is detops' own (see :func:`entry`), so a command may set
    process-wide state for its run (``bench`` fixes the C allocator's thresholds: see
    :mod:`detops._allocator`). Called from Python, nothing of the process changes.

    0: success; 1: a command failed, or an unexpected exception (one line on stderr, the
    traceback with ``--debug``); 2: a usage or input error (argparse's, a
    :class:`CommandError`, or an :class:`~detops._errors.InputError` such as an image a
    dataset cannot decode); 130: interrupted by Ctrl-C.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    args.argv = argv  # the command line as given, for a "resume with" hint
    args.program = program
    prefix = f"detops {args.command}"
    try:
        with catching():
            return int(args.func(args) or 0)
    except (CommandError, InputError) as error:
        if args.debug:  # the traceback too; the exit status stays the same
            traceback.print_exc()
        line = _one_line(input_error_message(error))
        print(f"{prefix}: error: {line}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return _interrupted(prefix, args.debug)
    except Exception as error:  # an unexpected failure: one line, not a traceback
        if raised_during_interrupt(error):  # a library's own error for the Ctrl-C
            return _interrupted(prefix, args.debug)
        if args.debug:
            traceback.print_exc()
            print(
                f"{prefix}: error: {type(error).__name__}: {_one_line(str(error))}",
                file=sys.stderr,
                flush=True,
            )
            return 1
        print(
            f"{prefix}: error: {type(error).__name__}: {_one_line(str(error))} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
            flush=True,
        )
        return 1


def _interrupted(prefix: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"\n{prefix}: interrupted", file=sys.stderr, flush=True)
    return 130


def entry() -> NoReturn:
    """The ``detops`` script and ``python -m detops``: :func:`main` as a program.

    Once the command has returned, its work is done and its exit status decided: a Ctrl-C
    in the second or so that Python then spends shutting torch down is ignored. (It used
    to land in one of torch's or tqdm's exit handlers, which printed "Exception ignored in
    atexit callback" with a KeyboardInterrupt traceback and still exited 0, or to end the
    process by the signal, status 130 with nothing said.)"""
    status = main(program=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(status)


if __name__ == "__main__":
    entry()
