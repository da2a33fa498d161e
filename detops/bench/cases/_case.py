"""Benchmark case types: one op at one size, detops against a peer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["BenchCase", "BenchFunctions"]


@dataclass(frozen=True)
class BenchFunctions:
    """Zero-argument callables timed side by side. ``reference`` only at small sizes."""

    detops: Callable[[], Any]
    peer: Callable[[], Any]
    reference: Callable[[], Any] | None = None


@dataclass(frozen=True)
class BenchCase:
    """One benchmark: an op at one size, detops against a peer.

    ``setup(device)`` builds the inputs (outside the timed call) and returns the
    callables. ``peer`` names what detops is measured against.
    """

    op: str
    size: str
    peer: str
    setup: Callable[[torch.device], BenchFunctions]
    quick: bool = True
    devices: tuple[str, ...] = ("cpu", "cuda")
    notes: str = field(default="", compare=False)

    @property
    def group(self) -> str:
        return f"{self.op}|{self.size}"
