"""The one registry: every fast op paired with its reference, strategy and tolerances.

Tests (``tests/test_against_reference.py``) and the command line (``python -m detops
verify``) read :data:`REGISTRY`. Entries hold function objects, never names to look up, so
go-to-definition works. Each op family declares its entries in
``detops/testing/families/<family>.py``; this module only gathers them. The benchmark
cases live in ``detops.bench.cases``, which imports from this package, never the reverse.
"""

from __future__ import annotations

from .entry import OpEntry
from .families import FAMILIES

__all__ = ["REGISTRY", "entry_by_name"]


def _gather() -> tuple[OpEntry, ...]:
    entries: list[OpEntry] = []
    for family in FAMILIES:
        entries.extend(family.ENTRIES)
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RuntimeError(f"detops.testing.registry: duplicate entry names {duplicates}")
    return tuple(entries)


REGISTRY = _gather()


def entry_by_name(name: str) -> OpEntry:
    """For the command line's ``--op NAME``; code should hold entry objects instead."""
    for entry in REGISTRY:
        if entry.name == name:
            return entry
    raise KeyError(f"no registry entry named {name!r}; known: {[e.name for e in REGISTRY]}")
