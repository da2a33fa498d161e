"""detops' own paths of the NMS family, called past the dispatch, for tests that compare
the dispatched call with an independent path (the sparse torch path here)."""

import importlib

import torch


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
