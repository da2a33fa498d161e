"""The FCOS prediction head shared by every FPN level."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from .._checks import check_int

__all__ = ["FCOSPredictionNetwork"]

_NAME = "FCOSPredictionNetwork"


def _stem(in_channels: int, stem_channels: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for out_channels in stem_channels:
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
        in_channels = out_channels
    return nn.Sequential(*layers)


def _flatten(x: Tensor) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, H*W, C]``, row-major like ``get_fpn_location_coords``."""
    batch, channels = x.shape[:2]
    return x.permute(0, 2, 3, 1).reshape(batch, -1, channels)


class FCOSPredictionNetwork(nn.Module):
    """Class, box and centerness predictions for every location of every FPN level.

    Two stems (one for classification, one for boxes) of 3x3 conv + ReLU, one per entry of
    ``stem_channels``, are shared across levels. Class logits come from the class stem; box
    deltas and centerness logits both come from the box stem. All convs start with weights
    ~ N(0, 0.01) and zero bias, except the class bias, ``-log(99)``, so every class starts at
    probability 0.01 (the focal loss paper's prior).

    Args:
        num_classes (int): foreground classes (no background channel).
        in_channels (int): channels of every FPN level.
        stem_channels (int or Sequence[int]): output channels of each stem conv; an int means
            a single conv.

    Returns (forward):
        Three dicts keyed like the input, ``class_logits [B, H*W, num_classes]``,
        ``boxreg_deltas [B, H*W, 4]`` and ``centerness_logits [B, H*W, 1]``, rows in
        row-major order (``k = h * W + w``), the order of ``get_fpn_location_coords``.
    """

    def __init__(
        self, num_classes: int, in_channels: int, stem_channels: int | Sequence[int]
    ) -> None:
        super().__init__()
        positive = "a positive int"
        num_classes = check_int(_NAME, "num_classes", num_classes, minimum=1, expected=positive)
        in_channels = check_int(_NAME, "in_channels", in_channels, minimum=1, expected=positive)
        stem_list = [stem_channels] if isinstance(stem_channels, int) else list(stem_channels)
        if not stem_list:
            raise ValueError(
                f"{_NAME}: stem_channels must be a positive int or a non-empty list of them, got []"
            )
        for index, channels in enumerate(stem_list):
            check_int(_NAME, f"stem_channels[{index}]", channels, minimum=1, expected=positive)
        self.num_classes = num_classes
        self.stem_cls = _stem(in_channels, stem_list)
        self.stem_box = _stem(in_channels, stem_list)
        last = stem_list[-1]
        self.pred_cls = nn.Conv2d(last, num_classes, kernel_size=3, padding=1)
        self.pred_box = nn.Conv2d(last, 4, kernel_size=3, padding=1)
        self.pred_ctr = nn.Conv2d(last, 1, kernel_size=3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        assert self.pred_cls.bias is not None  # built with nn.Conv2d's default bias=True
        nn.init.constant_(self.pred_cls.bias, -math.log(99))

    def forward(
        self, feats_per_fpn_level: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        class_logits, boxreg_deltas, centerness_logits = {}, {}, {}
        for level, feature in feats_per_fpn_level.items():
            box_feature = self.stem_box(feature)
            class_logits[level] = _flatten(self.pred_cls(self.stem_cls(feature)))
            boxreg_deltas[level] = _flatten(self.pred_box(box_feature))
            centerness_logits[level] = _flatten(self.pred_ctr(box_feature))
        return class_logits, boxreg_deltas, centerness_logits
