"""Independent paths of class-specific NMS for tests that compare the dispatched call
with them: detops' sparse torch path called past the dispatch, and torchvision's kernel
once per class."""

import importlib

import numpy as np
import torch
from torchvision.ops.boxes import _batched_nms_vanilla


def sparse_class_spec_nms(boxes, scores, class_ids, iou_threshold):
    """class_spec_nms by the sparse torch path alone (``detops.nms._nms_core``): kept
    indices by descending score, ties to the lower index."""
    nms_module = importlib.import_module("detops.nms")
    with torch.no_grad():
        if boxes.shape[0] == 0:
            return torch.empty(0, dtype=torch.int64)
        order, kept = nms_module._nms_core(
            boxes[None], scores[None], class_ids.to(torch.int64)[None], iou_threshold, False
        )
        return nms_module.where_true(kept[0], order[0])[0]


def per_class_kernel(boxes, scores, class_ids, iou_threshold) -> list[int]:
    """torchvision's kernel once per class (``_batched_nms_vanilla``); its final sort by
    score is not stable, so ties are put in index order (the detops contract) here."""
    kept = _batched_nms_vanilla(boxes, scores, class_ids, iou_threshold).numpy()
    return kept[np.lexsort((kept, -scores.double().numpy()[kept]))].tolist()
