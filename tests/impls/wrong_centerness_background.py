"""Mistake: background locations get centerness 0 instead of -1."""

import torch


def fcos_make_centerness_targets(deltas):
    left, top, right, bottom = deltas.unbind(dim=1)
    num = torch.minimum(left, right) * torch.minimum(top, bottom)
    den = torch.maximum(left, right) * torch.maximum(top, bottom)
    centerness = torch.sqrt(torch.where(den > 0, num / den.clamp(min=1e-30), 0.0))
    return torch.where((deltas < 0).any(dim=1), 0.0, centerness).to(deltas.dtype)
