"""Forms students write that are right on everything the course's pipeline produces, yet
differ from detops and torchvision outside it (found by an audit that wrote correct
implementations in many styles; verify had FAILed them):

- ``nms`` as a queue that keeps the boxes whose IoU with the kept box is ``<= t``: two
  zero-area boxes have IoU 0 / 0 = NaN, and ``NaN <= t`` is false, so the later one is
  dropped where torchvision keeps it;
- ``sigmoid_focal_loss`` with ``p_t = exp(-ce)`` and ``alpha_t`` chosen by ``t == 1``:
  exact for the one-hot targets and alpha 0.25 the course passes, not for soft targets or
  alpha -1.

verify gives DEPARTS, never FAIL.
"""

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou


def nms(boxes, scores, iou_threshold=0.5):
    order = torch.argsort(scores, descending=True, stable=True)
    keep = []
    while order.numel() > 0:
        best = order[0]
        keep.append(int(best))
        rest = order[1:]
        iou = box_iou(boxes[best].unsqueeze(0), boxes[rest])[0]
        order = rest[iou <= iou_threshold]
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction="none"):
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = torch.exp(-ce)
    # (full_like: a Python number in torch.where would be a float32 scalar, and 1 - alpha
    # rounded to float32 is a real error in a float64 loss)
    alpha_t = torch.where(targets == 1, torch.full_like(ce, alpha), torch.full_like(ce, 1 - alpha))
    loss = alpha_t * (1 - p_t) ** gamma * ce
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
