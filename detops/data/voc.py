"""The course's tiny VOC2007 detection dataset (and anything written in its JSON format)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms

from .._checks import check_int
from ..boxes import pad_gt_boxes, resize_and_center_crop_boxes
from ._images import load_rgb, unreadable_images
from ._paths import bracketed_listing, checked_relative_path
from .download import download_voc2007_tiny

__all__ = ["VOC_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "VOC2007DetectionTiny"]

#: The 20 PASCAL VOC classes in the course's label order.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_OP = "VOC2007DetectionTiny"
_PREFIX = "./here/"


class VOC2007DetectionTiny(Dataset):
    """Detection images and boxes from the course's JSON format, ready for FCOS.

    ``dataset_dir/voc07_<split>.json`` is a list of ``[image_path, [{"xyxy": [x1, y1, x2,
    y2], "name": class_name}, ...]]`` entries. ``image_path`` is relative to
    ``dataset_dir``, with the course's ``./here/`` prefix removed; boxes are in pixels of
    the original image.

    Each item goes through ``Resize(image_size)`` (shorter side), ``CenterCrop(image_size)``,
    ``ToTensor`` and ImageNet ``Normalize``; its boxes go through
    :func:`detops.boxes.resize_and_center_crop_boxes` (rows left empty by the crop become
    all -1, in place) and are padded to ``max_boxes`` rows with
    :func:`detops.boxes.pad_gt_boxes`.

    The JSON is checked completely when the dataset is built: its structure, that it lists
    at least one image, every class name, every box (finite, ``x1 <= x2`` and ``y1 <= y2``),
    the number of boxes per image, every image path (inside ``dataset_dir`` and present on
    disk) and every image header (PIL opens it; no pixels are decoded, so this stays cheap).
    A zero-width or zero-height box is accepted, as the course code accepts it: like a box
    left empty by the crop, it becomes an all -1 row. Damage past an image's header (a
    truncated JPEG) shows when the item is read: ``dataset[i]`` raises
    :class:`~detops.data.UnreadableImageError` (a ``ValueError``) naming the file, chained
    from PIL's error.

    Args:
        dataset_dir: the folder holding the JSON files and the images.
        split: ``"train"`` or ``"val"`` (reads ``voc07_<split>.json``).
        image_size: the square side of the returned images (> 0).
        max_boxes: rows of the returned GT tensor (> 0); an image with more boxes raises.
        download: fetch, verify and extract the course files first
            (:func:`detops.data.download_voc2007_tiny`; skipped when already done).
        class_names: names in label order; :data:`VOC_CLASSES` by default,
            ``detops.data.SYNTHETIC_CLASSES`` for the synthetic set.

    Items are the course code's triple ``(image_path, image, gt_boxes)``: ``image_path`` (str, the
    full path), ``image`` (float32 ``[3, image_size, image_size]``, normalized) and
    ``gt_boxes`` (float32 ``[max_boxes, 5]``, rows ``(x1, y1, x2, y2, class)`` in crop
    pixels, padding rows all -1). The default ``collate_fn`` batches them.

    Attributes:
        class_names, class_to_idx, idx_to_class: the label mapping.
        instances (list[tuple[str, Tensor[n, 5]]]): per image, its path and its boxes in
            original pixels with their class index.

    Raises:
        FileNotFoundError: the JSON file is missing (names the ways to get it).
        ValueError: a JSON file listing no images, a malformed entry (names the entry), an
            inverted box (names the entry and the box), an unknown class name (names it),
            more than ``max_boxes`` boxes in an image, an image path leaving
            ``dataset_dir``, images missing on disk or that PIL cannot open (listed).
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike[str],
        split: str = "train",
        image_size: int = 224,
        max_boxes: int = 40,
        download: bool = False,
        *,
        class_names: Sequence[str] = VOC_CLASSES,
    ) -> None:
        super().__init__()
        if split not in ("train", "val"):
            raise ValueError(f"{_OP}: split must be 'train' or 'val', got {split!r}")
        for name, value in (("image_size", image_size), ("max_boxes", max_boxes)):
            if check_int(_OP, name, value) <= 0:
                raise ValueError(f"{_OP}: {name} must be > 0, got {value}")
        names = tuple(class_names)
        if not names or len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{_OP}: class_names must be distinct strings, got {names!r}")

        self.dataset_dir = Path(dataset_dir)
        self.split = split
        self.image_size = image_size
        self.max_boxes = max_boxes
        self.class_names = names
        self.class_to_idx = {name: i for i, name in enumerate(names)}
        self.idx_to_class = dict(enumerate(names))
        if download:
            download_voc2007_tiny(self.dataset_dir)

        json_path = self.dataset_dir / f"voc07_{split}.json"
        if not json_path.is_file():
            raise FileNotFoundError(
                f"{_OP}: {json_path} not found. Pass download=True for the course's VOC2007 "
                "files, or write a synthetic set with "
                "detops.data.make_synthetic_detection_dataset(dataset_dir)."
            )
        with open(json_path, encoding="utf-8") as handle:
            try:
                raw = json.load(handle)
            except ValueError as err:
                raise ValueError(f"{_OP}: {json_path} is not valid JSON: {err}") from err
        self.instances: list[tuple[str, Tensor]] = self._parse(json_path, raw)
        self.image_transform = transforms.Compose(
            [
                transforms.Resize(image_size),
                transforms.CenterCrop(image_size),
                transforms.ToTensor(),
                transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            ]
        )

    def _parse(self, json_path: Path, raw: object) -> list[tuple[str, Tensor]]:
        if not isinstance(raw, list):
            raise ValueError(
                f"{_OP}: {json_path} must hold a list of [image_path, annotations] entries, "
                f"got {type(raw).__name__}"
            )
        if not raw:
            raise ValueError(
                f"{_OP}: {json_path} holds no images; expected at least one "
                "[image_path, annotations] entry"
            )
        instances = []
        unknown: dict[str, int] = {}
        missing = []
        for index, entry in enumerate(raw):
            where = f"{json_path} entry {index}"
            if (
                not isinstance(entry, (list, tuple))
                or len(entry) != 2
                or not isinstance(entry[0], str)
                or not isinstance(entry[1], list)
            ):
                raise ValueError(
                    f"{_OP}: {where} must be [image_path, [{{'xyxy': [...], 'name': ...}}, ...]], "
                    f"got {str(entry)[:120]}"
                )
            path, annotations = entry
            rel = path[len(_PREFIX) :] if path.startswith(_PREFIX) else path
            rel = checked_relative_path(_OP, self.dataset_dir, rel, where)
            if len(annotations) > self.max_boxes:
                raise ValueError(
                    f"{_OP}: {where} ({path}) has {len(annotations)} boxes, more than "
                    f"max_boxes={self.max_boxes}; raise max_boxes"
                )
            rows = []
            for k, ann in enumerate(annotations):
                xyxy = ann.get("xyxy") if isinstance(ann, dict) else None
                name = ann.get("name") if isinstance(ann, dict) else None
                if (
                    not isinstance(xyxy, list)
                    or len(xyxy) != 4
                    or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                        for v in xyxy
                    )
                    or not isinstance(name, str)
                ):
                    raise ValueError(
                        f"{_OP}: {where} box {k} must be {{'xyxy': [x1, y1, x2, y2] (finite "
                        f"numbers), 'name': str}}, got {str(ann)[:120]}"
                    )
                x1, y1, x2, y2 = xyxy
                if x2 < x1 or y2 < y1:
                    raise ValueError(
                        f"{_OP}: {where} ({path}) box {k} is inverted: xyxy must have "
                        f"x1 <= x2 and y1 <= y2, got {xyxy}"
                    )
                if name not in self.class_to_idx:
                    unknown.setdefault(name, index)
                    continue
                rows.append([*map(float, xyxy), float(self.class_to_idx[name])])
            full = self.dataset_dir / rel
            if not full.is_file():
                missing.append(rel)
            instances.append((str(full), torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)))
        if unknown:
            listed = ", ".join(f"{name!r} (first in entry {i})" for name, i in unknown.items())
            raise ValueError(
                f"{_OP}: {json_path} names classes that are not in class_names: {listed}; "
                f"known: {list(self.class_names)}"
            )
        if missing:
            raise ValueError(
                f"{_OP}: {json_path} lists images missing under {str(self.dataset_dir)!r}: "
                f"{bracketed_listing(missing)}"
            )
        unreadable = unreadable_images(
            (os.path.relpath(full, self.dataset_dir), full) for full, _ in instances
        )
        if unreadable:
            raise ValueError(
                f"{_OP}: {json_path} lists images that PIL cannot open (not an image, or a "
                f"damaged header): {bracketed_listing(unreadable)}"
            )
        return instances

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int) -> tuple[str, Tensor, Tensor]:
        image_path, boxes = self.instances[index]
        image = load_rgb(_OP, image_path)
        width, height = image.size
        boxes = resize_and_center_crop_boxes(boxes, (height, width), self.image_size)
        gt_boxes = pad_gt_boxes([boxes], self.max_boxes)[0]
        return image_path, self.image_transform(image), gt_boxes
