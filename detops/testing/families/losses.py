"""Registry entries for detops.losses and detops.inference, and their benchmarks.

The ``seed_style_*`` functions below are the course code's way of doing the same work,
kept as the peer that benchmarks and equality tests measure detops against. They are
deliberately *not* good code: per-image loops, a Python double loop building the one-hot,
``.item()`` on the normalizer, in-place ``sigmoid_`` of the course inference (copied
inputs here). Do not use them outside tests and benchmarks.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import reference.losses as ref_losses
from detops import losses

from ..compare import Tolerance
from ..entry import BenchCase, BenchFunctions, OpEntry
from ..strategies import Case, floats32

__all__ = [
    "ENTRIES",
    "BENCHMARKS",
    "FOCAL_TOLERANCES",
    "focal_cases",
    "class_id_cases",
]

# ----------------------------------------------------------------------------------------
# sigmoid focal loss
# ----------------------------------------------------------------------------------------

# float32: a few roundings per element; the gradient's ``p - t`` cancels for soft targets
# (absolute error ~1e-7), hence the atol. float16/bfloat16 are computed in float32 and
# rounded once into the output dtype (2**-11 and 2**-8 relative), plus that atol.
FOCAL_TOLERANCES = {
    torch.float64: Tolerance(1e-13, 1e-10),
    torch.float32: Tolerance(1e-6, 1e-5),
    torch.float16: Tolerance(1e-3, 2.0**-10),
    torch.bfloat16: Tolerance(1e-2, 2.0**-7),
}

# Logits that matter: saturated (+-1e4, +-100), mmcv's fp16 NaN point (9.39), 0.
_SPECIAL_LOGITS = (1e4, -1e4, 100.0, -100.0, 30.0, -30.0, 9.39, -9.39, 0.0)


def _logits(limit: float = math.inf):
    special = [v for v in _SPECIAL_LOGITS if abs(v) <= limit]
    return st.one_of(floats32(-20.0, 20.0), st.sampled_from(special))


@st.composite
def _focal_options(draw) -> dict:
    alpha = draw(st.one_of(st.sampled_from([-1.0, 0.0, 0.25, 1.0]), floats32(0.0, 1.0)))
    gamma = draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0]), floats32(0.0, 4.0)))
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    return {"alpha": alpha, "gamma": gamma, "reduction": reduction}


@st.composite
def _shapes(draw, min_dims: int = 1) -> tuple[int, ...]:
    return draw(hnp.array_shapes(min_dims=min_dims, max_dims=3, min_side=0, max_side=6))


def _logit_limit(options: dict, half: bool) -> float:
    # float16 holds sums up to 65504: with at most 216 elements of loss <= 100, a half
    # precision sum/mean stays finite. Elementwise ("none") keeps the +-1e4 logits.
    return 100.0 if half and options["reduction"] != "none" else math.inf


@st.composite
def focal_cases(draw, half: bool = False):
    """``(inputs, targets)`` of one shape: hard 0/1 or soft targets, saturated logits."""
    options = draw(_focal_options())
    shape = draw(_shapes())
    x = draw(hnp.arrays(np.float64, shape, elements=_logits(_logit_limit(options, half))))
    if draw(st.booleans()):
        t = draw(hnp.arrays(np.float64, shape, elements=st.sampled_from([0.0, 1.0])))
    else:
        t = draw(hnp.arrays(np.float64, shape, elements=floats32(0.0, 1.0)))
    return Case((x, t), options)


@st.composite
def class_id_cases(draw, half: bool = False):
    """``(inputs [..., C], class_ids [...])`` with background ids -1 (and other negatives)."""
    options = draw(_focal_options())
    shape = draw(_shapes())
    if shape[-1] == 0:
        shape = shape[:-1] + (1,)
    x = draw(hnp.arrays(np.float64, shape, elements=_logits(_logit_limit(options, half))))
    ids = draw(hnp.arrays(np.int64, shape[:-1], elements=st.integers(-2, shape[-1] - 1)))
    return Case((x, ids), options)


_FULL = {dtype: FOCAL_TOLERANCES[dtype] for dtype in (torch.float64, torch.float32)}
_HALF = {dtype: FOCAL_TOLERANCES[dtype] for dtype in (torch.float16, torch.bfloat16)}

ENTRIES = (
    OpEntry(
        name="sigmoid_focal_loss",
        op=losses.sigmoid_focal_loss,
        reference=ref_losses.sigmoid_focal_loss,
        strategy=focal_cases,
        tolerances=_FULL,
    ),
    OpEntry(
        name="sigmoid_focal_loss_half",
        op=losses.sigmoid_focal_loss,
        reference=ref_losses.sigmoid_focal_loss,
        strategy=lambda: focal_cases(half=True),
        tolerances=_HALF,
    ),
    OpEntry(
        name="sigmoid_focal_loss_grad",
        op=losses.sigmoid_focal_loss_grad,
        reference=ref_losses.sigmoid_focal_loss_grad,
        strategy=focal_cases,
        tolerances=FOCAL_TOLERANCES,
    ),
    OpEntry(
        name="sigmoid_focal_loss_from_class_ids",
        op=losses.sigmoid_focal_loss_from_class_ids,
        reference=ref_losses.sigmoid_focal_loss_from_class_ids,
        strategy=class_id_cases,
        tolerances=_FULL,
    ),
    OpEntry(
        name="sigmoid_focal_loss_from_class_ids_half",
        op=losses.sigmoid_focal_loss_from_class_ids,
        reference=ref_losses.sigmoid_focal_loss_from_class_ids,
        strategy=lambda: class_id_cases(half=True),
        tolerances=_HALF,
    ),
)


# ----------------------------------------------------------------------------------------
# benchmarks
# ----------------------------------------------------------------------------------------


def _focal_inputs(batch, locations, classes, device, seed=0):
    """Logits ~ N(0, 3) and ~1% positive one-hot targets (80% of rows carry a class)."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, locations, classes, generator=gen) * 3).to(device)
    ids = torch.randint(0, classes, (batch, locations), generator=gen)
    ids[torch.rand(batch, locations, generator=gen) > 0.8] = -1
    ids = ids.to(device)
    targets = torch.zeros_like(x)
    rows = ids >= 0
    targets[rows, ids[rows]] = 1.0
    return x, ids, targets


def _fwd_bwd(loss_fn, x):
    """Forward + backward of ``loss_fn(leaf)``; returns the gradient (setup outside)."""

    def run():
        leaf = x.detach().requires_grad_()
        (grad,) = torch.autograd.grad(loss_fn(leaf), leaf)
        return grad

    return run


def _focal_bench(batch, locations, classes, with_reference=False):
    def setup(device):
        x, _, t = _focal_inputs(batch, locations, classes, device)
        x_np, t_np = x.double().cpu().numpy(), t.double().cpu().numpy()
        return BenchFunctions(
            detops=_fwd_bwd(lambda v: losses.sigmoid_focal_loss(v, t, reduction="sum"), x),
            peer=_fwd_bwd(lambda v: torchvision.ops.sigmoid_focal_loss(v, t, reduction="sum"), x),
            reference=(lambda: ref_losses.sigmoid_focal_loss_grad(x_np, t_np, reduction="sum"))
            if with_reference
            else None,
        )

    return setup


def _class_id_bench(batch, locations, classes):
    def setup(device):
        x, ids, t = _focal_inputs(batch, locations, classes, device)
        return BenchFunctions(
            detops=_fwd_bwd(
                lambda v: losses.sigmoid_focal_loss_from_class_ids(v, ids, reduction="sum"), x
            ),
            peer=_fwd_bwd(lambda v: torchvision.ops.sigmoid_focal_loss(v, t, reduction="sum"), x),
        )

    return setup


_FWD_BWD = "forward+backward, reduction sum, ~1% positive targets"

BENCHMARKS = (
    BenchCase(
        "sigmoid_focal_loss",
        "tiny 2x16x4",
        "torchvision.ops.sigmoid_focal_loss",
        _focal_bench(2, 16, 4, with_reference=True),
        notes=_FWD_BWD + "; reference: loss and analytic gradient",
    ),
    BenchCase(
        "sigmoid_focal_loss",
        "A4 16x1029x20",
        "torchvision.ops.sigmoid_focal_loss",
        _focal_bench(16, 1029, 20),
        notes=_FWD_BWD,
    ),
    BenchCase(
        "sigmoid_focal_loss",
        "COCO 16x20267x80",
        "torchvision.ops.sigmoid_focal_loss",
        _focal_bench(16, 20267, 80),
        quick=False,
        notes=_FWD_BWD,
    ),
    BenchCase(
        "sigmoid_focal_loss_from_class_ids",
        "COCO 16x20267x80",
        "torchvision.ops.sigmoid_focal_loss on the dense one-hot",
        _class_id_bench(16, 20267, 80),
        quick=False,
        notes=_FWD_BWD,
    ),
)
