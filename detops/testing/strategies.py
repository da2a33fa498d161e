"""Hypothesis strategies that build valid detection inputs by construction.

All strategies return NumPy arrays (float64 holding float32-representable values, via
``width=32``), so the fast op and the reference see the same numbers. A :class:`Case`
bundles the arguments of one call; the registry turns it into tensors for the op and
into float64 arrays for the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

__all__ = [
    "Case",
    "floats32",
    "boxes",
    "gt_boxes",
    "padded_gt_batch",
    "fpn_strides",
    "fpn_shapes",
    "summarize_case",
    "fpn_locations",
    "ltrb_deltas",
]


@dataclass(frozen=True)
class Case:
    """Positional and keyword arguments of one call. Arrays are NumPy."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return summarize_case(self)


def _summarize_value(value, limit: int = 8) -> str:
    if isinstance(value, np.ndarray):
        flat = value.reshape(-1)
        body = np.array2string(flat[:limit], precision=4, separator=", ")
        more = ", ..." if flat.size > limit else ""
        return f"array{list(value.shape)}({body[1:-1]}{more})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_summarize_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_summarize_value(v) for v in value) + ")"
    return repr(value)


def summarize_case(case: Case) -> str:
    parts = [_summarize_value(a) for a in case.args]
    parts += [f"{k}={_summarize_value(v)}" for k, v in case.kwargs.items()]
    return "(" + ", ".join(parts) + ")"


def floats32(min_value: float, max_value: float) -> st.SearchStrategy[float]:
    """Finite floats that float32 represents exactly."""
    return st.floats(
        min_value, max_value, width=32, allow_nan=False, allow_infinity=False, allow_subnormal=False
    )


@st.composite
def boxes(
    draw,
    min_n: int = 0,
    max_n: int = 12,
    *,
    low: float = -50.0,
    high: float = 300.0,
    min_size: float = 0.5,
    max_size: float = 200.0,
    n: int | None = None,
) -> np.ndarray:
    """``[N, 4]`` XYXY boxes with ``x2 = x1 + w``, ``w >= min_size`` (float32 exact)."""
    count = n if n is not None else draw(st.integers(min_n, max_n))
    rows = []
    for _ in range(count):
        x1 = draw(floats32(low, high))
        y1 = draw(floats32(low, high))
        w = draw(floats32(min_size, max_size))
        h = draw(floats32(min_size, max_size))
        x2 = float(np.float32(x1 + w))
        y2 = float(np.float32(y1 + h))
        if x2 <= x1 or y2 <= y1:  # rounding can only shrink a tiny box to zero width
            x2, y2 = (
                float(np.nextafter(np.float32(x1), np.float32(np.inf))),
                float(np.nextafter(np.float32(y1), np.float32(np.inf))),
            )
        rows.append((x1, y1, x2, y2))
    return np.array(rows, dtype=np.float64).reshape(count, 4)


@st.composite
def gt_boxes(draw, min_n: int = 0, max_n: int = 8, *, num_classes: int = 20, **box_kwargs):
    """``[N, 5]`` GT rows ``(x1, y1, x2, y2, class)`` with integer-valued classes."""
    xyxy = draw(boxes(min_n, max_n, **box_kwargs))
    classes = draw(
        st.lists(st.integers(0, num_classes - 1), min_size=len(xyxy), max_size=len(xyxy))
    )
    return np.concatenate([xyxy, np.array(classes, dtype=np.float64).reshape(-1, 1)], axis=1)


@st.composite
def padded_gt_batch(
    draw, max_batch: int = 3, max_rows: int = 8, *, num_classes: int = 20, **box_kwargs
) -> np.ndarray:
    """``[B, N, 5]`` GT batches; padding rows (all -1) sit at random positions."""
    batch = draw(st.integers(1, max_batch))
    rows = draw(st.integers(0, max_rows))
    images = []
    for _ in range(batch):
        real = draw(gt_boxes(0, rows, num_classes=num_classes, **box_kwargs))
        padded = np.full((rows, 5), -1.0)
        slots = draw(st.permutations(range(rows)))[: len(real)]
        padded[sorted(slots)] = real
        images.append(padded)
    return np.stack(images).reshape(batch, rows, 5)


def fpn_strides(max_levels: int = 3, odd: bool = True) -> st.SearchStrategy[dict[str, int]]:
    """Strictly increasing strides per level, e.g. ``{"p3": 8, "p4": 16, "p5": 32}``.

    With ``odd=True`` non-power-of-two strides (7, 12, ...) are drawn too.
    """
    base = st.sampled_from([4, 7, 8, 12, 16]) if odd else st.sampled_from([4, 8, 16])

    @st.composite
    def build(draw):
        levels = draw(st.integers(1, max_levels))
        stride = draw(base)
        result = {}
        for i in range(levels):
            result[f"p{3 + i}"] = stride
            stride *= 2
        return result

    return build()


@st.composite
def fpn_shapes(draw, strides: dict[str, int], max_image: int = 96) -> dict[str, tuple[int, int]]:
    """``(H, W)`` per level for an image of random size, ``ceil(size / stride)`` cells."""
    height = draw(st.integers(1, max_image))
    width = draw(st.integers(1, max_image))
    return {level: (-(-height // stride), -(-width // stride)) for level, stride in strides.items()}


@st.composite
def fpn_locations(
    draw, strides: dict[str, int], max_image: int = 64, offset: float | None = None
) -> dict[str, np.ndarray]:
    """Row-major grid locations ``[H*W, 2]`` per level, as get_fpn_location_coords makes
    them: ``(s * (w + offset), s * (h + offset))`` for an image of random size. The offset
    is 0.5 or 0 (integer-valued coordinates) unless given."""
    shapes = draw(fpn_shapes(strides, max_image))
    if offset is None:
        offset = draw(st.sampled_from([0.5, 0.0]))
    result = {}
    for level, (height, width) in shapes.items():
        stride = strides[level]
        ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        coords = np.stack(((xs.ravel() + offset) * stride, (ys.ravel() + offset) * stride), 1)
        result[level] = coords.astype(np.float64).reshape(height * width, 2)
    return result


@st.composite
def ltrb_deltas(draw, count: int, *, max_value: float = 64.0, background: bool = True):
    """``[count, 4]`` FCOS deltas: positive rows, rows with exact zeros, and (with
    ``background``) rows of four -1s and rows with one negative delta. Values are
    float32-exact and either 0 or at least 1/64, so float32 products do not underflow."""
    kinds = ["positive", "zeros"] + (["background", "negative"] if background else [])
    rows = []
    for _ in range(count):
        kind = draw(st.sampled_from(kinds))
        row = [draw(floats32(1.0 / 64, max_value)) for _ in range(4)]
        if kind == "zeros":
            for i in draw(st.sets(st.integers(0, 3), min_size=1)):
                row[i] = 0.0
        elif kind == "background":
            row = [-1.0] * 4
        elif kind == "negative":
            row[draw(st.integers(0, 3))] = -draw(floats32(1.0 / 64, max_value))
        rows.append(row)
    return np.array(rows, dtype=np.float64).reshape(count, 4)
