"""Thin ``nn.Module`` wrappers: they hold parameters and configuration, ``forward`` calls ops.

Import as ``detops.nn`` (``import detops`` does not load torchvision's models)::

    from detops.nn import FCOS
    model = FCOS(num_classes=4, fpn_channels=64, stem_channels=[64, 64])
"""

from .backbone import BackboneWeights, DetectorBackboneWithFPN
from .fcos import FCOS
from .head import FCOSPredictionNetwork

__all__ = ["FCOS", "BackboneWeights", "DetectorBackboneWithFPN", "FCOSPredictionNetwork"]
