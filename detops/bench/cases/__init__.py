"""The benchmark cases: every op at its sizes, detops against a peer, one module per family.

``python -m detops bench`` and the pytest-benchmark suite (``benchmarks/``) both time
:data:`BENCHMARKS`. Each module also holds its benchmark inputs and the course-style
loops that serve as peers where torchvision has no such op. The cases
call the detops ops and NumPy references that the registry (:mod:`detops.testing`) pairs,
and its input helpers; the registry never imports this package.
"""

from __future__ import annotations

from detops.testing import _reference_package  # noqa: F401  (first: a shadowed 'reference')

from . import boxes, locations, losses, metrics, nms, targets
from ._case import BenchCase, BenchFunctions

__all__ = ["BENCHMARKS", "FAMILIES", "BenchCase", "BenchFunctions"]

#: The case modules, in the order their cases appear in :data:`BENCHMARKS`.
FAMILIES = (locations, boxes, metrics, losses, targets, nms)

BENCHMARKS: tuple[BenchCase, ...] = tuple(case for family in FAMILIES for case in family.BENCHMARKS)
