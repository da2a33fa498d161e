"""RegNetX-400MF trunk with a three-level feature pyramid (p3, p4, p5)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import RegNet_X_400MF_Weights, regnet_x_400mf
from torchvision.models.feature_extraction import create_feature_extractor

from .._checks import check_int, check_shape

__all__ = ["DetectorBackboneWithFPN", "BackboneWeights"]

_NAME = "DetectorBackboneWithFPN"

#: What ``weights`` may be: nothing (random init), a local state_dict file, or a torchvision
#: weights enum (or its name, e.g. ``"IMAGENET1K_V2"``) to download.
BackboneWeights: TypeAlias = str | os.PathLike | RegNet_X_400MF_Weights | None

# trunk node -> (name, channels, stride). Channel counts checked against torchvision 0.29's
# regnet_x_400mf: block2 64, block3 160, block4 400 (the course seed's 64/128/256 are wrong).
_RETURN_NODES = {
    "trunk_output.block2": ("c3", 64),
    "trunk_output.block3": ("c4", 160),
    "trunk_output.block4": ("c5", 400),
}
_LEVELS = (("c3", "p3"), ("c4", "p4"), ("c5", "p5"))


def _resolve_weights(weights: BackboneWeights) -> BackboneWeights:
    if isinstance(weights, str) and not os.path.exists(weights):
        names = [w.name for w in RegNet_X_400MF_Weights] + ["DEFAULT"]
        if weights in names:
            return RegNet_X_400MF_Weights[weights]
        raise FileNotFoundError(
            f"{_NAME}: weights must be None, a state_dict file or one of {names}, "
            f"got {weights!r} (no such file)"
        )
    return weights


def _download_state_dict(weights: RegNet_X_400MF_Weights) -> dict[str, Tensor]:
    """Fetch ``weights`` through torch.hub (cached under ``torch.hub.get_dir()``)."""
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True)
    except Exception as error:  # URLError, HTTPError, socket errors, hash mismatch, ...
        raise RuntimeError(
            f"{_NAME}: could not download the {weights} backbone weights from {weights.url} "
            f"({type(error).__name__}: {error}). This machine may have no internet access. "
            "Either train from random init (weights=None, the CLI's default), or download the "
            "file on a machine that can reach the URL, copy it here, and pass its path "
            "(weights='regnet_x_400mf.pth', or --backbone-weights PATH on the command line); "
            f"placing it in {torch.hub.get_dir()}/checkpoints/ also works."
        ) from error


def _load_state_dict_file(path: str | os.PathLike) -> Mapping[str, Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]  # a training checkpoint that wraps the state_dict
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{_NAME}: weights file {os.fspath(path)!r} must hold a regnet_x_400mf state_dict, "
            f"got {type(state).__name__}"
        )
    return state


def parameter_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of the module's (first) parameter: the dtype its convolutions take."""
    return next(module.parameters()).dtype


def check_images(op: str, images: object, dtype: torch.dtype) -> Tensor:
    """``images`` as the trunk takes them, a floating ``[B, 3, H, W]`` tensor of the model's
    ``dtype`` (any floating dtype under ``torch.autocast``, which casts for the convolutions);
    otherwise an error naming ``op`` (torch's convolution error does not say which module or
    input)."""
    images = check_shape(op, "images", images, "[B, 3, H, W]")
    if not images.is_floating_point():  # (check_floating's message, with the usual cause)
        raise TypeError(
            f"{op}: images must be a floating tensor [B, 3, H, W] (normalized, e.g. "
            f"images.float() / 255 then the mean/std normalization), got {images.dtype}"
        )
    if images.dtype != dtype and not torch.is_autocast_enabled(images.device.type):
        raise TypeError(
            f"{op}: images must have the model's dtype {dtype} (images.to({dtype}), or run "
            f"under torch.autocast), got {images.dtype}"
        )
    return images


class DetectorBackboneWithFPN(nn.Module):
    """RegNetX-400MF trunk (c3/c4/c5) with a top-down FPN giving p3/p4/p5.

    ``c3, c4, c5`` are torchvision ``regnet_x_400mf``'s ``trunk_output.block2/3/4`` (64, 160,
    400 channels, strides 8, 16, 32). Each gets a 1x1 lateral conv to ``out_channels``; the
    top-down path adds the coarser merged map, upsampled (nearest) to the finer map's size,
    and a 3x3 conv (padding 1) smooths every merged map. Upsampling to the lateral's size
    instead of a fixed 2x makes odd input sizes work (e.g. 100 px: c4 is 7x7, c5 is 4x4).

    Args:
        out_channels (int): channels of every FPN level.
        weights: ``None`` for random init; a path to a local ``regnet_x_400mf`` state_dict
            (read with ``torch.load(weights_only=True)``); or a ``RegNet_X_400MF_Weights``
            enum (or its name) to download through ``torch.hub``. A failed download raises
            ``RuntimeError`` that says how to supply the file by hand.

    Shape:
        images ``[B, 3, H, W]`` -> ``{"p3": [B, out, ceil(H/8), ceil(W/8)], "p4": ..., "p5": ...}``
        (sizes follow the trunk's strided convs). Another shape raises ``ValueError``, an
        integer dtype or a floating dtype other than the parameters' (outside
        ``torch.autocast``) ``TypeError``.
    """

    fpn_strides: dict[str, int]

    def __init__(self, out_channels: int, weights: BackboneWeights = None) -> None:
        super().__init__()
        out_channels = check_int(_NAME, "out_channels", out_channels)
        if out_channels <= 0:
            raise ValueError(f"{_NAME}: out_channels must be > 0, got {out_channels}")
        self.out_channels = out_channels
        self.fpn_strides = {"p3": 8, "p4": 16, "p5": 32}

        weights = _resolve_weights(weights)
        trunk = regnet_x_400mf()
        if isinstance(weights, RegNet_X_400MF_Weights):
            trunk.load_state_dict(_download_state_dict(weights))
        elif weights is not None:
            trunk.load_state_dict(_load_state_dict_file(weights))
        self.backbone = create_feature_extractor(
            trunk, return_nodes={node: name for node, (name, _) in _RETURN_NODES.items()}
        )
        channels = dict(_RETURN_NODES.values())
        self.lateral = nn.ModuleDict(
            {p: nn.Conv2d(channels[c], out_channels, kernel_size=1) for c, p in _LEVELS}
        )
        self.output = nn.ModuleDict(
            {p: nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1) for _, p in _LEVELS}
        )

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        feats = self.backbone(check_images(_NAME, images, parameter_dtype(self)))
        merged: dict[str, Tensor] = {}
        coarser: Tensor | None = None
        for c, p in reversed(_LEVELS):
            lateral = self.lateral[p](feats[c])
            if coarser is not None:
                lateral = lateral + F.interpolate(coarser, size=lateral.shape[-2:], mode="nearest")
            merged[p] = coarser = lateral
        return {p: self.output[p](merged[p]) for _, p in _LEVELS}
