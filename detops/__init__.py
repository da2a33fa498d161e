"""detops: vetted, stateless tensor ops for the FCOS detector.

Every op here has a slow NumPy twin of the same name in ``reference`` and a registry
entry in ``detops.testing`` that property-tests the two against each other.

The names below are imported on first use (PEP 562), so ``import detops`` and the command
line's ``--help`` do not pay for importing torch until an op is touched.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# public name -> the module of this package that defines it
_EXPORTS = {
    "get_fpn_location_coords": "locations",
    "fcos_match_locations_to_gt": "matching",
    "fcos_get_deltas_from_locations": "deltas",
    "fcos_apply_deltas_to_locations": "deltas",
    "fcos_make_centerness_targets": "deltas",
    "box_iou": "boxes",
    "clip_boxes_to_image": "boxes",
    "resize_and_center_crop_boxes": "boxes",
    "center_crop_boxes_to_original": "boxes",
    "pad_gt_boxes": "boxes",
    "mean_average_precision": "metrics",
    "nms": "nms",
    "class_spec_nms": "nms",
    "batched_nms_per_image": "nms",
    "sigmoid_focal_loss": "losses",
    "sigmoid_focal_loss_from_class_ids": "losses",
    "sigmoid_focal_loss_grad": "losses",
    "fcos_loss": "losses",
    "fcos_inference": "inference",
    "FCOSDetections": "inference",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from .boxes import (
        box_iou,
        center_crop_boxes_to_original,
        clip_boxes_to_image,
        pad_gt_boxes,
        resize_and_center_crop_boxes,
    )
    from .deltas import (
        fcos_apply_deltas_to_locations,
        fcos_get_deltas_from_locations,
        fcos_make_centerness_targets,
    )
    from .inference import FCOSDetections, fcos_inference
    from .locations import get_fpn_location_coords
    from .losses import (
        fcos_loss,
        sigmoid_focal_loss,
        sigmoid_focal_loss_from_class_ids,
        sigmoid_focal_loss_grad,
    )
    from .matching import fcos_match_locations_to_gt
    from .metrics import mean_average_precision
    from .nms import batched_nms_per_image, class_spec_nms, nms


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'detops' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """``detops.nms`` is the op, as with an eager ``from .nms import nms``: importing the
    submodule of the same name must not rebind the package attribute to the module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
