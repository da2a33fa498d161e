"""Mistake: among overlapping candidate boxes the largest one wins (max instead of min area)."""

import torch


def fcos_match_locations_to_gt(locations_per_fpn_level, strides_per_fpn_level, gt_boxes):
    order = sorted(locations_per_fpn_level, key=lambda level: strides_per_fpn_level[level])
    gt = gt_boxes.to(torch.float64)
    matched = {}
    for level, centers in locations_per_fpn_level.items():
        stride = strides_per_fpn_level[level]
        low = 0.0 if level == order[0] else 4.0 * stride
        high = float("inf") if level == order[-1] else 8.0 * stride
        out = torch.full((centers.shape[0], 5), -1.0, dtype=gt_boxes.dtype)
        if gt.shape[0] == 0 or centers.shape[0] == 0:
            matched[level] = out
            continue
        x, y = centers[:, 0:1].double(), centers[:, 1:2].double()
        dist = torch.stack([x - gt[:, 0], y - gt[:, 1], gt[:, 2] - x, gt[:, 3] - y], dim=2)
        m = dist.max(dim=2).values
        ok = (dist.min(dim=2).values > 0) & (m > low) & (m < high) & (gt[:, 4] != -1)
        area = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
        best = torch.where(ok, area.expand_as(m), -float("inf")).argmax(dim=1)
        hit = ok.any(dim=1)
        out[hit] = gt_boxes[best[hit]]
        matched[level] = out
    return matched
