"""Imported first by :mod:`detops.testing`: the NumPy references must be detops' own."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def check_reference_package() -> None:
    """The references are the top-level package ``reference``, installed with detops; a
    file ``reference.py`` (or a folder) in the current folder shadows it under
    ``python -m detops``, which puts that folder first on ``sys.path``. Say so, instead of
    ``No module named 'reference.boxes'``. (``find_spec`` does not run the module.)"""
    spec = importlib.util.find_spec("reference")
    if spec is None:
        raise ImportError("detops.testing: the NumPy reference package 'reference' is missing")
    if spec.submodule_search_locations is None or not any(
        (Path(folder) / "boxes.py").is_file() for folder in spec.submodule_search_locations
    ):
        raise ImportError(
            f"detops.testing: the module 'reference' found at {spec.origin} is not detops' "
            "NumPy reference package but shadows it (python -m puts the current folder first "
            "on sys.path); rename it, or run the detops command instead of python -m detops"
        )


check_reference_package()
