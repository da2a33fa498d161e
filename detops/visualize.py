"""Pictures: predicted and GT boxes with class names and scores, saved as PNG.

Typical use with a dataset item and a model's detections::

    from detops.visualize import save_detections_png, unnormalize_image

    path, image, gt = dataset[0]
    save_detections_png(
        "out/0.png", unnormalize_image(image),
        boxes=pred_boxes, labels=pred_labels, scores=pred_scores,
        gt_boxes=gt, class_names=dataset.class_names,
    )
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from ._checks import check_tensor, shape_str
from .data._atomic import atomic_write_bytes
from .data.voc import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["unnormalize_image", "draw_detections", "save_png", "save_detections_png"]

GT_COLOR = (0, 255, 0)
#: One colour per class for predictions, cycled when there are more classes.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64), (64, 128, 255), (255, 200, 0), (255, 0, 255), (0, 230, 230),
    (255, 128, 0), (160, 80, 255), (255, 255, 255), (128, 255, 128), (255, 160, 160),
)  # fmt: skip


def unnormalize_image(
    image: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Undo ``Normalize(mean, std)`` and return a ``uint8 [3, H, W]`` image on the CPU.

    Args:
        image (Tensor[3, H, W]): a normalized float image (as the datasets return it).
        mean, std: the normalization's per-channel mean and std (ImageNet's by default).

    Returns:
        Tensor[3, H, W]: uint8, ``round(clamp((image * std + mean) * 255, 0, 255))``.
    """
    op = "unnormalize_image"
    check_tensor(op, "image", image)
    if image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
        raise ValueError(
            f"{op}: image must be a float tensor of shape [3, H, W], got {image.dtype} "
            f"{shape_str(image)}"
        )
    image = image.detach().cpu().to(torch.float32)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((image * std_t + mean_t) * 255).round().clamp(0, 255).to(torch.uint8)


def _as_uint8(op: str, image: Tensor) -> Tensor:
    check_tensor(op, "image", image)
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"{op}: image must have shape [3, H, W] or [1, H, W], got {shape_str(image)}"
        )
    image = image.detach().cpu()
    if image.dtype == torch.uint8:
        pass
    elif image.is_floating_point():
        low, high = (
            float(image.min()) if image.numel() else 0.0,
            float(image.max()) if image.numel() else 0.0,
        )
        if low < -1e-3 or high > 1 + 1e-3:
            raise ValueError(
                f"{op}: a float image must hold values in [0, 1], got values in "
                f"[{low:.3g}, {high:.3g}]; for a normalized image call unnormalize_image first"
            )
        image = (image.to(torch.float32) * 255).round().clamp(0, 255).to(torch.uint8)
    else:
        raise TypeError(f"{op}: image must be uint8 or floating, got {image.dtype}")
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def _name(class_names: Sequence[str] | None, label: int) -> str:
    if class_names is not None and 0 <= label < len(class_names):
        return class_names[label]
    return str(label)


def _boxes(op: str, name: str, boxes: Tensor, height: int, width: int) -> Tensor:
    check_tensor(op, name, boxes)
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{op}: {name} must have shape [N, 4], got {shape_str(boxes)}")
    boxes = boxes.detach().cpu().to(torch.float32)
    bad = boxes.isnan().any(dim=1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bool(bad.any()):
        raise ValueError(
            f"{op}: {name} must be XYXY boxes with x1 <= x2, y1 <= y2 and no NaN, got "
            f"{int(bad.sum())} row(s) that are not (first: {boxes[bad][0].tolist()})"
        )
    limits = torch.tensor([width, height, width, height], dtype=torch.float32)
    return torch.minimum(boxes.clamp(min=0), limits - 1)


def draw_detections(
    image: Tensor,
    *,
    boxes: Tensor | None = None,
    labels: Tensor | None = None,
    scores: Tensor | None = None,
    gt_boxes: Tensor | None = None,
    gt_labels: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.0,
    width: int = 2,
) -> Tensor:
    """Draw GT boxes (green, ``GT name``) and predictions (a colour per class,
    ``name 0.87``) on an image with :func:`torchvision.utils.draw_bounding_boxes`.

    Boxes are XYXY in the image's pixels; they are clamped to the image before drawing.

    Args:
        image (Tensor[3, H, W] or [1, H, W]): uint8, or float in [0, 1] (a normalized
            image raises: call :func:`unnormalize_image` first).
        boxes (Tensor[K, 4], optional): predicted boxes.
        labels (Tensor[K], optional): predicted class indices.
        scores (Tensor[K], optional): predicted scores, shown with two decimals;
            predictions scoring below ``score_threshold`` are not drawn.
        gt_boxes (Tensor[G, 4] or Tensor[G, 5], optional): GT boxes; ``[G, 5]`` rows
            ``(x1, y1, x2, y2, class)`` as the datasets return them (rows with class -1,
            padding, are skipped).
        gt_labels (Tensor[G], optional): GT classes for ``[G, 4]`` boxes.
        class_names (sequence of str, optional): names by class index; indices are shown
            when absent.
        score_threshold (float): minimum score to draw a prediction.
        width (int): line width in pixels.

    Returns:
        Tensor[3, H, W]: uint8 CPU image with the boxes drawn (the input is not modified).
    """
    op = "draw_detections"
    canvas = _as_uint8(op, image).clone()
    height, width_px = canvas.shape[-2:]

    if gt_boxes is not None:
        check_tensor(op, "gt_boxes", gt_boxes)
        if gt_boxes.dim() == 2 and gt_boxes.shape[-1] == 5:
            if gt_labels is not None:
                raise ValueError(f"{op}: gt_labels must be None when gt_boxes has a class column")
            keep = gt_boxes[:, 4] != -1
            gt_labels, gt_boxes = gt_boxes[keep, 4].to(torch.int64), gt_boxes[keep, :4]
        gt = _boxes(op, "gt_boxes", gt_boxes, height, width_px)
        if gt_labels is not None and gt_labels.shape != (gt.shape[0],):
            raise ValueError(
                f"{op}: gt_labels must have shape [{gt.shape[0]}], got {shape_str(gt_labels)}"
            )
        if gt.shape[0]:
            names = (
                [f"GT {_name(class_names, int(c))}" for c in gt_labels.tolist()]
                if gt_labels is not None
                else ["GT"] * gt.shape[0]
            )
            canvas = draw_bounding_boxes(canvas, gt, names, colors=GT_COLOR, width=width)

    if boxes is not None:
        pred = _boxes(op, "boxes", boxes, height, width_px)
        count = pred.shape[0]
        for name, value in (("labels", labels), ("scores", scores)):
            if value is not None:
                check_tensor(op, name, value)
                if value.shape != (count,):
                    raise ValueError(
                        f"{op}: {name} must have shape [{count}], got {shape_str(value)}"
                    )
        keep = torch.ones(count, dtype=torch.bool)
        if scores is not None:
            keep = scores.detach().cpu() >= score_threshold
        pred = pred[keep]
        label_list = (
            labels.detach().cpu()[keep].tolist() if labels is not None else [None] * len(pred)
        )
        score_list = (
            scores.detach().cpu()[keep].tolist() if scores is not None else [None] * len(pred)
        )
        if len(pred):
            texts, colors = [], []
            for label, score in zip(label_list, score_list, strict=True):
                text = _name(class_names, int(label)) if label is not None else ""
                if score is not None:
                    text = f"{text} {score:.2f}".strip()
                texts.append(text)
                colors.append(
                    PALETTE[int(label) % len(PALETTE)] if label is not None else PALETTE[0]
                )
            canvas = draw_bounding_boxes(canvas, pred, texts, colors=colors, width=width)
    return canvas


def save_png(image: Tensor, path: str | os.PathLike[str]) -> Path:
    """Write an image as PNG atomically (temporary file + rename); returns the path.

    Args:
        image (Tensor[3, H, W] or [1, H, W]): uint8, or float in [0, 1].
        path: the destination (parent folders are created).
    """
    pixels = _as_uint8("save_png", image).permute(1, 2, 0).contiguous().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def save_detections_png(path: str | os.PathLike[str], image: Tensor, **kwargs) -> Path:
    """:func:`draw_detections` then :func:`save_png`; keyword arguments as in the former."""
    return save_png(draw_detections(image, **kwargs), path)
