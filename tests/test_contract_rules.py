"""The README's two rules, checked op by op.

Padding rule: a GT row ``(x1, y1, x2, y2, class)`` is padding exactly when its class is -1,
whatever its coordinates. So every op must treat a class -1 row with real coordinates the
way it treats the all -1 row that ``pad_gt_boxes`` and matching write.

Background-delta rule: a row of GT deltas is background exactly when one of its deltas is
negative. So every op must treat ``(1, -1, 1, 1)`` the way it treats ``(-1, -1, -1, -1)``.

Each row of the tables runs the op twice, on the odd row and on the canonical one, and
compares; what the canonical rows give is checked against the references elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

import reference.deltas as ref_deltas
import reference.losses as ref_losses
import reference.matching as ref_matching
from detops import (
    clip_boxes_to_image,
    fcos_get_deltas_from_locations,
    fcos_loss,
    fcos_make_centerness_targets,
    fcos_match_locations_to_gt,
    get_fpn_location_coords,
    pad_gt_boxes,
    resize_and_center_crop_boxes,
)

STRIDES = {"p3": 8, "p4": 16}
LOCATIONS = get_fpn_location_coords({"p3": (8, 8), "p4": (4, 4)}, STRIDES)
REAL = [4.0, 4.0, 40.0, 36.0, 2.0]
PADDING_WITH_COORDINATES = [8.0, 8.0, 60.0, 60.0, -1.0]  # covers many locations
PADDING = [-1.0] * 5


def _gt(odd_row: list[float]) -> torch.Tensor:
    return torch.tensor([[REAL, odd_row, PADDING]])  # [1, 3, 5]


def _matching(odd_row):
    matched = fcos_match_locations_to_gt(LOCATIONS, STRIDES, _gt(odd_row))
    return torch.cat(list(matched.values()), dim=1)


def _deltas(odd_row):
    flat = torch.cat(list(LOCATIONS.values()))
    rows = torch.tensor([odd_row] * flat.shape[0])
    return fcos_get_deltas_from_locations(flat, rows, 8)


def _clip(odd_row):
    return clip_boxes_to_image(_gt(odd_row), (32, 32))


def _resize_crop(odd_row):
    return resize_and_center_crop_boxes(_gt(odd_row), (48, 64), 32)


def _loss_with_gt_row(odd_row):
    """fcos_loss where the location matched to ``odd_row`` has the deltas that
    fcos_get_deltas_from_locations gives for it (the pipeline's own chain)."""
    g = torch.Generator().manual_seed(0)
    matched = torch.tensor([[REAL, odd_row]])  # [1, L=2, 5]
    locations = torch.tensor([[20.0, 20.0], [30.0, 30.0]])
    gt_deltas = fcos_get_deltas_from_locations(locations, matched, 8)
    return _loss(matched, gt_deltas, g)


def _loss(matched, gt_deltas, g):
    losses, normalizer = fcos_loss(
        torch.randn(1, 2, 3, generator=g),
        torch.rand(1, 2, 4, generator=g),
        torch.randn(1, 2, 1, generator=g),
        matched,
        gt_deltas,
        10.0,
    )
    return torch.stack([losses["loss_cls"], losses["loss_box"], losses["loss_ctr"], normalizer])


PADDING_RULE: dict[str, Callable[[list[float]], torch.Tensor]] = {
    "fcos_match_locations_to_gt": _matching,
    "fcos_get_deltas_from_locations": _deltas,
    "clip_boxes_to_image": _clip,
    "resize_and_center_crop_boxes": _resize_crop,
    "fcos_loss (matched rows through the deltas op)": _loss_with_gt_row,
}


@pytest.mark.parametrize("op", PADDING_RULE.values(), ids=PADDING_RULE.keys())
def test_a_class_minus_one_row_is_padding_whatever_its_coordinates(op):
    odd, canonical = op(PADDING_WITH_COORDINATES), op(PADDING)
    if op is _clip:  # clipping passes padding rows through untouched, coordinates included
        assert odd[0, 1].tolist() == PADDING_WITH_COORDINATES
        assert canonical[0, 1].tolist() == PADDING
        torch.testing.assert_close(odd[:, [0, 2]], canonical[:, [0, 2]], rtol=0, atol=0)
        assert _clip(PADDING_WITH_COORDINATES[:4] + [5.0])[0, 1, 2] == 32  # a box is clipped
    else:
        torch.testing.assert_close(odd, canonical, rtol=0, atol=0)


def test_pad_gt_boxes_writes_the_canonical_padding_row():
    padded = pad_gt_boxes([torch.tensor([REAL])], max_boxes=3)
    assert padded[0, 1:].tolist() == [PADDING, PADDING]


def test_the_padding_row_really_covers_locations_so_the_matching_row_can_fail():
    # Were the class -1 row a box, it would match locations that REAL does not cover.
    as_box = _matching(PADDING_WITH_COORDINATES[:4] + [5.0])
    assert (as_box[0, :, 4] == 5).any()


ONE_NEGATIVE_DELTA = [1.0, -1.0, 1.0, 1.0]
ALL_MINUS_ONE = [-1.0] * 4


def _centerness(delta_row):
    return fcos_make_centerness_targets(torch.tensor([[2.0, 1.0, 2.0, 3.0], delta_row]))


def _loss_with_delta_row(delta_row):
    """fcos_loss where location 1 has a real class and the given GT deltas."""
    g = torch.Generator().manual_seed(1)
    matched = torch.tensor([[REAL, REAL]])
    gt_deltas = torch.tensor([[[2.0, 1.0, 2.0, 3.0], delta_row]])
    return _loss(matched, gt_deltas, g)


BACKGROUND_DELTA_RULE: dict[str, Callable[[list[float]], torch.Tensor]] = {
    "fcos_make_centerness_targets": _centerness,
    "fcos_loss": _loss_with_delta_row,
}


@pytest.mark.parametrize("op", BACKGROUND_DELTA_RULE.values(), ids=BACKGROUND_DELTA_RULE.keys())
def test_a_delta_row_with_one_negative_delta_is_background(op):
    torch.testing.assert_close(op(ONE_NEGATIVE_DELTA), op(ALL_MINUS_ONE), rtol=0, atol=0)


def test_the_loss_rows_differ_when_the_row_is_foreground():
    # The comparison above is not vacuous: a foreground row changes the box and ctr terms.
    foreground = _loss_with_delta_row([1.0, 1.0, 1.0, 1.0])
    background = _loss_with_delta_row(ALL_MINUS_ONE)
    assert foreground[1] != background[1] and foreground[2] != background[2]


def _np(value):
    return (
        {k: v.double().numpy() for k, v in value.items()}
        if isinstance(value, dict)
        else (value.double().numpy())
    )


def _matching_pair(odd_row):
    ours = _matching(odd_row)
    theirs = ref_matching.fcos_match_locations_to_gt(_np(LOCATIONS), STRIDES, _np(_gt(odd_row)))
    return ours, np.concatenate(list(theirs.values()), axis=1)


def _deltas_pair(odd_row):
    flat = torch.cat(list(LOCATIONS.values()))
    rows = torch.tensor([odd_row] * flat.shape[0])
    return _deltas(odd_row), ref_deltas.fcos_get_deltas_from_locations(_np(flat), _np(rows), 8)


def _centerness_pair(delta_row):
    rows = torch.tensor([[2.0, 1.0, 2.0, 3.0], delta_row])
    return _centerness(delta_row), ref_deltas.fcos_make_centerness_targets(_np(rows))


def _loss_pair(delta_row):
    g = torch.Generator().manual_seed(1)
    inputs = (
        torch.randn(1, 2, 3, generator=g),
        torch.rand(1, 2, 4, generator=g),
        torch.randn(1, 2, 1, generator=g),
        torch.tensor([[REAL, REAL]]),
        torch.tensor([[[2.0, 1.0, 2.0, 3.0], delta_row]]),
    )
    ours = _loss_with_delta_row(delta_row)
    losses, normalizer = ref_losses.fcos_loss(*(_np(t) for t in inputs), 10.0)
    theirs = [losses["loss_cls"], losses["loss_box"], losses["loss_ctr"], normalizer]
    return ours, np.asarray(theirs, dtype=np.float64)


@pytest.mark.parametrize(
    "pair, row",
    [
        (_matching_pair, PADDING_WITH_COORDINATES),
        (_deltas_pair, PADDING_WITH_COORDINATES),
        (_centerness_pair, ONE_NEGATIVE_DELTA),
        (_loss_pair, ONE_NEGATIVE_DELTA),
    ],
    ids=["matching", "deltas", "centerness", "fcos_loss"],
)
def test_the_references_follow_the_same_rules_on_the_odd_rows(pair, row):
    ours, theirs = pair(row)
    np.testing.assert_allclose(ours.double().numpy(), theirs, rtol=1e-6, atol=1e-6)
