"""Mistake: no guard on the denominator, so a location on a box edge gives 0 / 0 = NaN."""

import torch


def fcos_make_centerness_targets(deltas):
    left, top, right, bottom = deltas.unbind(dim=1)
    num = torch.minimum(left, right) * torch.minimum(top, bottom)
    den = torch.maximum(left, right) * torch.maximum(top, bottom)
    centerness = torch.sqrt(num / den)
    return torch.where((deltas < 0).any(dim=1), -1.0, centerness).to(deltas.dtype)
