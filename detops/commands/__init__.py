"""Subcommands of ``python -m detops``.

Each module defines ``add_parser(subparsers)``, which registers its parser (with the help line
from ``COMMANDS``) and sets ``func`` to a callable taking the parsed args and returning the
exit status. Only the chosen command's module is imported (see ``detops.cli``), so a module
imports torch and the rest of detops inside its ``run`` function, never at the top.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> the one-line help shown by `detops --help`, in the order it lists them
COMMANDS = {
    "verify": "check ops (detops' or yours) against the NumPy references",
    "bench": "benchmark detops against torchvision and the course code's loops",
    "demo": "run verify, bench, a short training run and detection pictures into one folder",
    "train": "train FCOS on the synthetic set or a VOC-format folder, report val mAP",
    "detect": "run a trained checkpoint on images and write annotated PNGs",
    "evaluate": "COCO and VOC mAP of a trained checkpoint, PR curves and JSON",
}


def load_command(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{name}")
