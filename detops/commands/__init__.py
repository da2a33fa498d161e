"""Subcommands of ``python -m detops``. Each module defines ``add_parser(subparsers)``,
which registers its parser and sets ``func`` to a callable taking the parsed args and
returning the exit status. Add a module to COMMAND_MODULES to register it."""

from __future__ import annotations

import importlib

COMMAND_MODULES = ("verify", "bench", "demo", "train", "detect")


def load_command_modules():
    return [importlib.import_module(f"{__name__}.{name}") for name in COMMAND_MODULES]
