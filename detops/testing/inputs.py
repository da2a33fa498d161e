"""Fixed inputs that the benchmark cases (``detops.bench.cases``) and the tests share: FPN
stride sets and seeded random boxes."""

from __future__ import annotations

import torch

__all__ = ["A4_STRIDES", "COCO_STRIDES", "random_boxes"]

#: The course's FPN (assignment 4): P3-P5.
A4_STRIDES = {"p3": 8, "p4": 16, "p5": 32}
#: The FCOS paper's FPN on COCO: P3-P7.
COCO_STRIDES = {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}


def random_boxes(
    shape: tuple[int, ...],
    *,
    seed: int = 0,
    extent: float = 500.0,
    min_side: float = 0.0,
    max_side: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``[*shape, 4]`` valid XYXY float32 boxes: top-left corners uniform in
    ``[0, extent)^2``, width and height uniform in ``[min_side, max_side)`` (``max_side``
    defaults to ``extent / 4``).

    With ``generator`` the boxes are drawn from it (``seed`` is then unused), so a caller
    can draw more from the same stream.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    if max_side is None:
        max_side = extent / 4
    xy = torch.rand(*shape, 2, generator=generator, dtype=torch.float32) * extent
    wh = min_side + torch.rand(*shape, 2, generator=generator, dtype=torch.float32) * (
        max_side - min_side
    )
    return torch.cat((xy, xy + wh), dim=-1)
