"""A synthetic detection set in the course's VOC JSON format, made to be learned quickly.

:func:`make_synthetic_detection_dataset` writes PNG images of large, high-contrast,
separated shapes on noisy grey backgrounds, and ``voc07_train.json`` / ``voc07_val.json``
in the course format, so :class:`~detops.data.VOC2007DetectionTiny` reads it unchanged::

    from detops.data import VOC2007DetectionTiny, make_synthetic_detection_dataset

    names = make_synthetic_detection_dataset("data/synthetic", image_size=128)
    train = VOC2007DetectionTiny("data/synthetic", "train", image_size=128,
                                 class_names=names)

Each class has its own shape and its own colour: circle (red), square (green),
triangle (blue), cross (yellow). Every image holds 1 to 3 objects whose sides span 22% to
45% of the image, kept ``gap`` pixels apart, never touching the border. Images are
deterministic in ``(seed, split, index)``: changing ``num_train`` leaves the val split as
it was.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .._atomic import atomic_write_bytes, atomic_write_text
from .._checks import check_int
from ._paths import bracketed_listing

__all__ = [
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_COLORS",
    "make_synthetic_detection_dataset",
    "synthetic_image",
    "synthetic_shape_mask",
]

SYNTHETIC_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
#: Each class's RGB colour, in label order (drawn with a jitter of up to 20 per channel).
SYNTHETIC_COLORS = np.array(
    [(230, 40, 40), (40, 200, 70), (50, 90, 240), (240, 215, 40)], dtype=np.float64
)
_SPLIT_IDS = {"train": 0, "val": 1}
_FORMAT_VERSION = 1
_OP = "make_synthetic_detection_dataset"


def synthetic_shape_mask(kind: int, size: int) -> np.ndarray:
    """A boolean ``[size, size]`` mask of class ``kind``'s shape (an index into
    :data:`SYNTHETIC_CLASSES`), filling its box edge to edge."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    last = size - 1
    if kind == 0:  # circle
        draw.ellipse([0, 0, last, last], fill=255)
    elif kind == 1:  # square
        draw.rectangle([0, 0, last, last], fill=255)
    elif kind == 2:  # triangle, apex up
        draw.polygon([(last / 2, 0), (last, last), (0, last)], fill=255)
    else:  # cross: two bars a third of the size thick
        third = size / 3
        draw.rectangle([third, 0, last - third, last], fill=255)
        draw.rectangle([0, third, last, last - third], fill=255)
    return np.asarray(canvas) > 127


def _place(rng: np.random.Generator, image_size: int, num_objects: int, gap: int):
    """Non-overlapping square boxes ``(x, y, size)``, ``gap`` apart, inside the image."""
    lo = max(4, int(round(0.22 * image_size)))
    hi = max(lo + 1, int(round(0.45 * image_size)))
    placed: list[tuple[int, int, int]] = []
    for _ in range(60):
        if len(placed) == num_objects:
            break
        size = int(rng.integers(lo, hi + 1))
        margin = 2
        if size + 2 * margin > image_size:
            continue
        x = int(rng.integers(margin, image_size - size - margin + 1))
        y = int(rng.integers(margin, image_size - size - margin + 1))
        clear = all(
            x + size + gap <= px or px + ps + gap <= x or y + size + gap <= py or py + ps + gap <= y
            for px, py, ps in placed
        )
        if clear:
            placed.append((x, y, size))
    return placed


def synthetic_image(
    seed: int, split: str, index: int, image_size: int = 128, *, gap: int = 6
) -> tuple[np.ndarray, list[dict]]:
    """One synthetic image and its annotations, deterministic in ``(seed, split, index)``.

    Args:
        seed: the dataset seed.
        split: ``"train"`` or ``"val"``.
        index: the image number within the split.
        image_size: the side of the square image in pixels (>= 32).
        gap: the minimum distance in pixels between two objects.

    Returns:
        ``(pixels, objects)``: ``pixels`` is a ``uint8 [image_size, image_size, 3]`` array;
        ``objects`` a list of ``{"xyxy": [x1, y1, x2, y2], "name": class_name}`` where the
        object covers pixel columns ``x1 .. x2 - 1`` and rows ``y1 .. y2 - 1`` (continuous
        pixel-edge coordinates, so ``x2 - x1`` is the width in pixels).
    """
    rng = np.random.default_rng([int(seed), _SPLIT_IDS[split], int(index)])
    base = rng.uniform(70.0, 170.0)
    tint = rng.uniform(-15.0, 15.0, size=3)
    pixels = base + tint + rng.normal(0.0, 22.0, size=(image_size, image_size, 3))
    objects = []
    num_objects = int(rng.integers(1, 4))
    for x, y, size in _place(rng, image_size, num_objects, gap):
        kind = int(rng.integers(len(SYNTHETIC_CLASSES)))
        mask = synthetic_shape_mask(kind, size)
        color = np.clip(SYNTHETIC_COLORS[kind] + rng.uniform(-20.0, 20.0, size=3), 0, 255)
        patch = color + rng.normal(0.0, 6.0, size=(size, size, 3))
        region = pixels[y : y + size, x : x + size]
        region[mask] = patch[mask]
        objects.append(
            {
                "xyxy": [float(x), float(y), float(x + size), float(y + size)],
                "name": SYNTHETIC_CLASSES[kind],
            }
        )
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), objects


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def make_synthetic_detection_dataset(
    root: str | os.PathLike[str],
    *,
    num_train: int = 512,
    num_val: int = 128,
    image_size: int = 128,
    seed: int = 0,
    overwrite: bool = False,
) -> tuple[str, ...]:
    """Write the synthetic detection set under ``root`` and return its class names.

    Layout (the course's, so the real loader reads it)::

        root/images/train_00000.png ...   root/images/val_00000.png ...
        root/voc07_train.json             root/voc07_val.json
        root/synthetic.json               (the parameters, for idempotence)

    Each JSON file is a list of ``["./here/images/<split>_<i>.png", [{"xyxy": [x1, y1, x2,
    y2], "name": <class>}, ...]]`` entries, coordinates in pixels of the stored image.
    Every file is written atomically (temporary file + rename): first the record, marked
    incomplete, then the images, the JSON files, and last the record of the parameters. A
    second call with the same parameters finds the record and writes nothing; other
    parameters, a damaged or interrupted set (or ``overwrite=True``) rewrite the set, and
    a smaller set removes the images a larger one left (names it writes, nothing else).

    ``root`` must be new, empty (hidden files such as ``.DS_Store`` aside), or a set this
    function wrote (it holds ``synthetic.json``): any other folder, such as a real VOC
    dataset with its own ``voc07_train.json``, is refused before anything is written, so
    its files cannot be replaced.

    Args:
        root: the dataset folder (created when missing).
        num_train: images in the train split (>= 1).
        num_val: images in the val split (>= 1).
        image_size: the side of the square images in pixels (>= 32). Load with the same
            ``image_size`` so Resize + CenterCrop leave the image as it is.
        seed: the seed; image ``i`` of a split depends only on ``(seed, split, i)``.
        overwrite: rewrite even when the record says the set is there (a folder that is
            not a synthetic set is refused all the same).

    Returns:
        tuple[str, ...]: :data:`SYNTHETIC_CLASSES`, the class names in label order;
        pass it as ``class_names`` to :class:`~detops.data.VOC2007DetectionTiny`.

    Raises:
        TypeError: ``root`` is not a path; a non-int count, size or seed.
        ValueError: ``root`` is a file (or under one); ``root`` is a non-empty folder that
            is not a synthetic set made by this function (nothing is changed); a count,
            size or seed out of range.
    """
    for name, value, low in (
        ("num_train", num_train, 1),
        ("num_val", num_val, 1),
        ("image_size", image_size, 32),
    ):
        if check_int(_OP, name, value) < low:
            raise ValueError(f"{_OP}: {name} must be >= {low}, got {value}")
    check_int(_OP, "seed", seed, minimum=0, expected="a non-negative int")

    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(
            f"{_OP}: root must be a path (str or os.PathLike), got {type(root).__name__}"
        )
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(
            f"{_OP}: root must be a folder (new, empty, or a synthetic set), got "
            f"{str(root)!r}, which is a file"
        )
    params = {
        "format": _FORMAT_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "seed": seed,
        "classes": list(SYNTHETIC_CLASSES),
    }
    record = root / "synthetic.json"
    splits = {"train": num_train, "val": num_val}
    if not overwrite and _is_complete(root, record, params, splits):
        return SYNTHETIC_CLASSES
    if root.is_dir() and _read_record(record) is None:
        # (hidden files, .DS_Store or .git, are no dataset: they stay, untouched)
        foreign = sorted(entry.name for entry in root.iterdir() if not entry.name.startswith("."))
        if foreign:
            raise ValueError(
                f"{_OP}: {str(root)!r} holds files that are not a synthetic set made by this "
                f"function (it has no {record.name} record): {bracketed_listing(foreign)}; "
                "nothing was changed. Choose a new or empty folder; a VOC-format dataset is "
                "read as it is by VOC2007DetectionTiny (detops train --data PATH)."
            )
    try:
        (root / "images").mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise ValueError(
            f"{_OP}: root must be a folder (new, empty, or a synthetic set), got "
            f"{str(root)!r}, where a folder cannot be created: {err}"
        ) from err

    # Written first, so an interrupted run leaves a folder recognised as ours (and rewritten).
    atomic_write_text(record, json.dumps({**params, "complete": False}, indent=1))
    for split, count in splits.items():
        entries = []
        for index in range(count):
            pixels, objects = synthetic_image(seed, split, index, image_size)
            rel = f"images/{split}_{index:05d}.png"
            atomic_write_bytes(root / rel, _png_bytes(pixels), fsync=False)
            entries.append([f"./here/{rel}", objects])
        atomic_write_text(root / f"voc07_{split}.json", json.dumps(entries))
    _remove_images_beyond(root / "images", splits)
    atomic_write_text(record, json.dumps(params, indent=1))
    return SYNTHETIC_CLASSES


_IMAGE_NAME = re.compile(r"(?P<split>train|val)_(?P<index>\d{5,})\.png")


def _remove_images_beyond(images: Path, splits: dict[str, int]) -> None:
    """Delete the images a larger set written here before left behind (``val_00200.png``
    when the set now has 128 val images): only names this function writes, so nothing
    else in the folder is touched."""
    for entry in images.iterdir():
        name = _IMAGE_NAME.fullmatch(entry.name)
        if name and int(name["index"]) >= splits[name["split"]] and entry.is_file():
            entry.unlink()


def _read_record(record: Path) -> dict | None:
    """The parameter record this function writes, or None when ``record`` is not one."""
    try:
        value = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and "format" in value else None


def _is_complete(root: Path, record: Path, params: dict, splits: dict[str, int]) -> bool:
    if _read_record(record) != params:
        return False
    for split, count in splits.items():
        if not (root / f"voc07_{split}.json").is_file():
            return False
        if not all((root / f"images/{split}_{i:05d}.png").is_file() for i in _spot_checks(count)):
            return False
    return True


def _spot_checks(count: int) -> Sequence[int]:
    return sorted({0, count // 2, count - 1})
