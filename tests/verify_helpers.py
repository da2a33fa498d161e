"""What the verify tests share: the shipped implementations' folder, fast options and
picking one function's report."""

from pathlib import Path

import torch

IMPLS = Path(__file__).parent / "impls"
# Few cases and a short shrinking budget: the tests look at verdicts and reasons.
FAST = {
    "examples": 6,
    "shrink_seconds": 1.0,
    "shrink_draws": 150,
    "timeout": 5.0,
    "dtypes": (torch.float32,),
}


def only(report, name):
    """The report of function ``name`` (exactly one)."""
    (result,) = [f for f in report.functions if f.name == name]
    return result
