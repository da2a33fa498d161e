"""detops' public test kit: strategies, compare helpers and the op registry.

Use it to check your own implementation against the references::

    from detops.testing import REGISTRY
    for entry in REGISTRY: ...

or run ``python -m detops verify --impl your_module``.
"""

from . import _reference_package  # noqa: F401  (first: says when 'reference' is shadowed)
from .compare import EXACT, Comparison, Tolerance, assert_trees_close, compare_trees
from .entry import OpEntry
from .registry import REGISTRY, entry_by_name
from .strategies import Case

__all__ = [
    "REGISTRY",
    "EXACT",
    "Case",
    "Comparison",
    "OpEntry",
    "Tolerance",
    "assert_trees_close",
    "compare_trees",
    "entry_by_name",
]
