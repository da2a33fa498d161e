"""Pictures: predicted and GT boxes with class names and scores, saved as PNG.

Made to be shown: an image whose shorter side is under ``min_side`` pixels (the 64 px
synthetic set, say) is upscaled by a whole factor (nearest neighbour: the pixels stay
honest) before drawing; predictions are solid boxes in a colour per class, labelled
``name 0.87`` on a filled tag that stays inside the image and does not cover another tag;
GT boxes are dashed white with a dark edge, and a legend strip under the image says which
is which. :func:`detection_grid` puts several such panels on one page.

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
import math
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, make_grid

from ._atomic import atomic_write_bytes
from ._checks import check_int, check_tensor, shape_str
from .data.voc import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "detection_grid",
    "draw_detections",
    "save_detections_png",
    "save_png",
    "unnormalize_image",
]

#: GT boxes: dashed white, with a dark edge so they show on light backgrounds too.
GT_COLOR = (255, 255, 255)
GT_EDGE = (0, 0, 0)
#: Images whose shorter side is below this are upscaled by a whole factor for drawing.
MIN_SIDE = 320
FONT_SIZE = 13
LEGEND_HEIGHT = 22
#: One colour per class for predictions, cycled when there are more classes.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64), (64, 128, 255), (255, 200, 0), (255, 0, 255), (0, 230, 230),
    (255, 128, 0), (160, 80, 255), (150, 100, 40), (128, 255, 128), (255, 160, 160),
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


@cache
def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


#: Upscaling stops where the longer side would pass this (a 4000 x 1 picture would become
#: 1,280,000 px wide, more than PIL opens).
MAX_UPSCALED_SIDE = 4096


def _upscale_factor(height: int, width: int, min_side: int | None) -> int:
    if not min_side or min(height, width) >= min_side:
        return 1
    wanted = math.ceil(min_side / max(1, min(height, width)))
    return max(1, min(wanted, MAX_UPSCALED_SIDE // max(1, height, width)))


def _text_color(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light tags, white on dark ones (ITU-R BT.601 luma)."""
    luma = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place_tags(
    boxes: list[list[float]], sizes: list[tuple[int, int]], height: int, width: int
) -> list[tuple[int, int, int, int] | None]:
    """Tag rectangles ``(x1, y1, x2, y2)`` for labels of ``sizes`` (w, h), one per box, in
    order (the caller sorts by score): above the box's top-left corner, else inside its top,
    else below or inside its bottom, shifted left to stay inside the image; a spot that
    covers an earlier tag is skipped, and then the tag slides down in steps. None: no free
    spot (the label is left out rather than drawn over another)."""
    placed: list[tuple[int, int, int, int]] = []
    out: list[tuple[int, int, int, int] | None] = []
    for (x1, y1, _x2, y2), (w, h) in zip(boxes, sizes, strict=True):
        left = int(min(max(0, x1), max(0, width - w)))
        tops = [y1 - h, y1 + 1, y2 + 1, y2 - h]
        tops += [y1 + 1 + k * h for k in range(1, max(1, int((y2 - y1) // h)))]
        tops += [y2 + 1 + k * h for k in range(1, 4)] + [y1 - h - k * h for k in range(1, 4)]
        choice = None
        for top in tops:
            top = int(top)
            if top < 0 or top + h > height:
                continue
            rect = (left, top, left + w, top + h)
            if not any(_overlaps(rect, other) for other in placed):
                choice = rect
                break
        if choice is not None:
            placed.append(choice)
        out.append(choice)
    return out


def _dashed_rectangle(
    draw: ImageDraw.ImageDraw, box: Sequence[float], color, edge, width: int, dash: int = 6
) -> None:
    x1, y1, x2, y2 = (round(v) for v in box)

    def segments(a: int, b: int):
        for start in range(a, b + 1, 2 * dash):
            yield start, min(start + dash, b)

    for line_width, fill in ((width + 2, edge), (width, color)):
        for a, b in segments(x1, x2):
            draw.line([(a, y1), (b, y1)], fill=fill, width=line_width)
            draw.line([(a, y2), (b, y2)], fill=fill, width=line_width)
        for a, b in segments(y1, y2):
            draw.line([(x1, a), (x1, b)], fill=fill, width=line_width)
            draw.line([(x2, a), (x2, b)], fill=fill, width=line_width)


def _legend_strip(
    width: int, entries: list[tuple[str, tuple[int, int, int], bool | None]], height: int
) -> Image.Image:
    """A dark strip: per entry a short solid (prediction) or dashed (GT) line, or none
    (``dashed=None``), and its name."""
    strip = Image.new("RGB", (width, height), (32, 32, 32))
    draw = ImageDraw.Draw(strip)
    font = _font()
    x, mid = 6, height // 2
    for text, color, dashed in entries:
        mark = 22 if dashed is not None else 0
        needed = mark + int(draw.textlength(text, font=font))
        rest = width - 6 - x
        if needed > rest:  # no room: say that entries were left out
            draw.text((x, mid), "...", fill=(235, 235, 235), font=font, anchor="lm")
            break
        if dashed:
            for a in range(x, x + 18, 6):
                draw.line([(a, mid), (a + 3, mid)], fill=color, width=2)
        elif dashed is not None:
            draw.line([(x, mid), (x + 18, mid)], fill=color, width=3)
        x += mark
        fill = color if dashed is None else (235, 235, 235)
        draw.text((x, mid), text, fill=fill, font=font, anchor="lm")
        x += int(draw.textlength(text, font=font)) + 14
    return strip


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
    min_side: int | None = MIN_SIDE,
    legend: bool | None = None,
) -> Tensor:
    """Draw predictions (solid, a colour per class, ``name 0.87`` on a filled tag) and GT
    boxes (dashed white with a dark edge) on an image, upscaled when small.

    Prediction boxes are drawn with :func:`torchvision.utils.draw_bounding_boxes`; tags and
    dashed GT boxes with PIL. Boxes are XYXY in the image's pixels; they are clamped to the
    image. Tags go above a box's top-left corner (else inside it, else below), are shifted
    left to stay inside the image, and never cover one another: tags are placed by
    descending score and one with no free spot is left out.

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
        gt_labels (Tensor[G], optional): GT classes for ``[G, 4]`` boxes (checked; GT
            boxes are not labelled, the legend names their style).
        class_names (sequence of str, optional): names by class index; indices are shown
            when absent.
        score_threshold (float): minimum score to draw a prediction.
        width (int): line width in pixels (of the drawn, possibly upscaled, image).
        min_side (int, optional): an image whose shorter side is below this is upscaled by
            the smallest whole factor that reaches it (nearest neighbour), as far as the
            longer side stays within ``MAX_UPSCALED_SIDE`` (4096 px); None: never.
        legend (bool, optional): add a strip under the image naming the styles (GT dashed,
            each predicted class's colour). Default: when GT boxes are given.

    Returns:
        Tensor[3, H', W']: uint8 CPU image, ``H' = f H (+ the legend strip)``, ``W' = f W``
        with the upscale factor ``f`` (the input is not modified).
    """
    op = "draw_detections"
    canvas = _as_uint8(op, image)
    height, width_px = canvas.shape[-2:]

    gt = None
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

    pred = None
    texts: list[str] = []
    colors: list[tuple[int, int, int]] = []
    pred_classes: list[int] = []
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
        order = torch.arange(count)
        if scores is not None:
            score_cpu = scores.detach().cpu().to(torch.float32)
            order = torch.sort(score_cpu, descending=True, stable=True).indices
            order = order[score_cpu[order] >= score_threshold]
        pred = pred[order]
        label_list = labels.detach().cpu()[order].tolist() if labels is not None else None
        score_list = score_cpu[order].tolist() if scores is not None else None
        for i in range(len(pred)):
            label = int(label_list[i]) if label_list is not None else None
            text = _name(class_names, label) if label is not None else ""
            if score_list is not None:
                text = f"{text} {score_list[i]:.2f}".strip()
            texts.append(text)
            colors.append(PALETTE[label % len(PALETTE)] if label is not None else PALETTE[0])
            if label is not None and label not in pred_classes:
                pred_classes.append(label)

    factor = _upscale_factor(height, width_px, min_side)
    if factor > 1:
        canvas = canvas.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
        height, width_px = height * factor, width_px * factor
        # Box coordinates are continuous pixel positions: they scale with the pixels.
        if pred is not None:
            pred = pred * factor
        if gt is not None:
            gt = gt * factor
    else:
        canvas = canvas.clone()

    if pred is not None and len(pred):
        canvas = draw_bounding_boxes(canvas, pred, colors=colors, width=width)
    picture = Image.fromarray(canvas.permute(1, 2, 0).contiguous().numpy(), mode="RGB")
    draw = ImageDraw.Draw(picture)
    if gt is not None:
        for box in gt.tolist():
            _dashed_rectangle(draw, box, GT_COLOR, GT_EDGE, max(1, width - 1))
    if pred is not None and any(texts):  # texts: one per drawn box
        font = _font()
        sizes = []
        for text in texts:
            # whole pixels for the default anchor, though the stubs say float
            left, top, right, bottom = (int(v) for v in draw.textbbox((0, 0), text, font=font))
            sizes.append((right - left + 6, bottom - top + 4 if text else 0))
        boxes_xy = pred.tolist()
        spots = _place_tags(boxes_xy, [(w, max(h, 1)) for w, h in sizes], height, width_px)
        for text, color, spot in zip(texts, colors, spots, strict=True):
            if not text or spot is None:
                continue
            draw.rectangle(spot, fill=color)
            x = spot[0] + 3
            y = (spot[1] + spot[3]) // 2
            draw.text((x, y), text, fill=_text_color(color), font=font, anchor="lm")

    show_legend = legend if legend is not None else gt is not None
    if show_legend:
        entries: list[tuple[str, tuple[int, int, int], bool | None]] = []
        if gt is not None:
            entries.append(("ground truth", GT_COLOR, True))
        entries += [(_name(class_names, c), PALETTE[c % len(PALETTE)], False) for c in pred_classes]
        if pred is not None and not len(pred):
            entries.append(("no prediction", (160, 160, 160), None))
        elif pred is not None and not pred_classes:
            entries.append(("prediction", PALETTE[0], False))
        strip = _legend_strip(width_px, entries, LEGEND_HEIGHT)
        page = Image.new("RGB", (width_px, height + LEGEND_HEIGHT))
        page.paste(picture, (0, 0))
        page.paste(strip, (0, height))
        picture = page
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


def detection_grid(panels: Sequence[Tensor], *, columns: int = 4, padding: int = 6) -> Tensor:
    """Put drawn panels (:func:`draw_detections` outputs) on one page, ``columns`` per row,
    with :func:`torchvision.utils.make_grid`. Panels of other sizes are padded (dark grey,
    bottom and right) to the largest.

    Returns:
        Tensor[3, H, W]: uint8.
    """
    op = "detection_grid"
    if not panels:
        raise ValueError(f"{op}: panels must hold at least one image, got none")
    check_int(op, "columns", columns, minimum=1)
    images = [_as_uint8(op, panel) for panel in panels]
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    padded = []
    for image in images:
        frame = torch.full((3, height, width), 48, dtype=torch.uint8)
        frame[:, : image.shape[1], : image.shape[2]] = image
        padded.append(frame)
    return make_grid(
        torch.stack(padded),
        nrow=min(columns, len(padded)),
        padding=padding,
        pad_value=255,
    )


def save_png(image: Tensor, path: str | os.PathLike[str]) -> Path:
    """Write an image as PNG atomically (temporary file + rename); returns the path.

    Args:
        image (Tensor[3, H, W] or [1, H, W]): uint8, or float in [0, 1].
        path: the destination, ending in ``.png`` (any case; parent folders are created).

    Raises:
        ValueError: a path with another extension (PNG bytes in ``x.jpg`` would be misread
            by tools that trust the name).
    """
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"save_png: path must end in .png, got {os.fspath(path)!r}")
    pixels = _as_uint8("save_png", image).permute(1, 2, 0).contiguous().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def save_detections_png(path: str | os.PathLike[str], image: Tensor, **kwargs) -> Path:
    """:func:`draw_detections` then :func:`save_png`; keyword arguments as in the former."""
    return save_png(draw_detections(image, **kwargs), path)
