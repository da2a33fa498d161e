"""``python -m detops detect``: run a trained FCOS checkpoint on images, write annotated PNGs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detops.cli import CommandError

from . import COMMANDS
from ._checkpoint import (
    check_checkpoint_file,
    check_output_dir,
    check_thresholds,
    load_trained_model,
)
from .train import MIN_IMAGE_SIZE, check_device_name, resolve_device

_DESCRIPTION = """\
Run an FCOS checkpoint written by `python -m detops train` on images and write one PNG per
image with the detected boxes, class names and scores drawn on the original picture.

Each image is prepared as in training (Resize + CenterCrop to the checkpoint's image size,
ImageNet normalization); the boxes are mapped back to the original pixels before drawing,
so objects cut off by the centre crop are not detected. Pictures with a shorter side under
320 px are upscaled by a whole factor for drawing, so the labels can be read.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "detect",
        help=COMMANDS["detect"],
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to run on")
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT",
        help="checkpoint.pt written by `python -m detops train` (holds the model's config)",
    )
    parser.add_argument(
        "--output-dir",
        default="detections",
        metavar="DIR",
        help="where <image name>.png files are written, <image name>_1.png where that name "
        "is an input image or an earlier image's (default: detections)",
    )
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=0.3,
        help="keep detections scoring above this (default: 0.3, as the course code)",
    )
    parser.add_argument(
        "--nms-thresh", type=float, default=0.5, help="IoU threshold of NMS (default: 0.5)"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="override the checkpoint's input size, at least 64 (default: the size it was "
        "trained at)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N or auto (default: auto, cuda if available)",
    )
    parser.set_defaults(func=run_detect)


def _check_args(args: argparse.Namespace) -> None:
    """Usage errors, found before anything is imported or loaded."""
    check_thresholds(args, ("score_thresh", "nms_thresh"))
    if args.image_size is not None and args.image_size < MIN_IMAGE_SIZE:
        raise CommandError(
            f"--image-size must be at least {MIN_IMAGE_SIZE} (the FPN's coarsest level has "
            f"stride 32), got {args.image_size}"
        )
    check_device_name(args.device)
    check_checkpoint_file(args.checkpoint)
    check_output_dir(args.output_dir)


_LISTED_BAD_IMAGES = 20


def _check_images(paths: list[str]) -> None:
    """Every input must be an image file PIL can read (reads headers only); one error
    names every one that is not (folders, missing files, then unreadable files, up to 20
    of those and a count), so that one run finds them all."""
    from PIL import Image, UnidentifiedImageError

    folders = [path for path in paths if Path(path).is_dir()]
    missing = [path for path in paths if not Path(path).exists()]
    problems = [f"folder(s), not image files: {', '.join(folders)}"] if folders else []
    problems += [f"no such image file(s): {', '.join(missing)}"] if missing else []
    bad = []
    for path in paths:
        if not Path(path).is_file():
            continue
        try:
            with Image.open(path) as handle:
                handle.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            kind = (
                "not an image PIL can read"
                if isinstance(error, UnidentifiedImageError)
                else f"an unreadable image ({type(error).__name__}: {error})"
            )
            bad.append(f"{path} is {kind}")
    if len(bad) == 1 and not problems:
        problems.append(bad[0])
    elif bad:
        listed = "; ".join(bad[:_LISTED_BAD_IMAGES])
        more = len(bad) - _LISTED_BAD_IMAGES
        tail = f"; and {more} more" if more > 0 else ""
        problems.append(f"{len(bad)} of {len(paths)} inputs are not usable: {listed}{tail}")
    if problems:
        raise CommandError("; ".join(problems))


def run_detect(args: argparse.Namespace) -> int:
    _check_args(args)
    _check_images(args.images)

    import torch
    from torchvision import transforms
    from torchvision.transforms.functional import pil_to_tensor

    from detops.boxes import center_crop_boxes_to_original
    from detops.data import IMAGENET_MEAN, IMAGENET_STD
    from detops.visualize import save_detections_png

    device = resolve_device(args.device)
    model, extra = load_trained_model(args.checkpoint)
    model.to(device).eval()
    class_names = extra.get("class_names")
    image_size = args.image_size or int(extra["image_size"])
    transform = transforms.Compose(
        [
            transforms.Resize(image_size),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )
    output = Path(args.output_dir)
    written: list[Path] = []
    try:
        for path, target in zip(args.images, _output_paths(args.images, output), strict=True):
            picture = _decoded(path, f"{len(written)} of {len(args.images)} images written")
            size = (picture.height, picture.width)
            with torch.no_grad():
                (found,) = model(
                    transform(picture).unsqueeze(0).to(device),
                    test_score_thresh=args.score_thresh,
                    test_nms_thresh=args.nms_thresh,
                ).as_dicts()
            boxes = center_crop_boxes_to_original(found["boxes"].cpu().float(), size, image_size)
            save_detections_png(  # atomic: an interrupted write leaves no partial PNG
                target,
                pil_to_tensor(picture),
                boxes=boxes,
                labels=found["labels"].cpu(),
                scores=found["scores"].cpu(),
                class_names=class_names,
            )
            written.append(target)
            listed = ", ".join(
                f"{class_names[int(c)] if class_names else int(c)} {float(s):.2f}"
                for c, s in zip(found["labels"], found["scores"], strict=True)
            )
            count = f"{len(boxes)} detection{'' if len(boxes) == 1 else 's'}"
            print(f"{path}: {count}{': ' + listed if listed else ''} -> {target}")
    except KeyboardInterrupt:
        print(
            f"\ndetops detect: interrupted; {len(written)} of {len(args.images)} images "
            f"written to {output}",
            file=sys.stderr,
            flush=True,
        )
        return 130
    return 0


def _output_paths(images: list[str], output: Path) -> list[Path]:
    """``<output>/<image name>.png`` per image, ``<image name>_<k>.png`` (the smallest
    ``k`` from 1 that is free) where that name is taken: by an earlier image's picture
    (``a.jpg`` and ``a.png``, or ``dir1/a.png`` and ``dir2/a.png``) or by an input image
    itself (``--output-dir`` the images' own folder), which is never written over."""
    inputs = {Path(image).resolve() for image in images}
    taken: set[Path] = set()
    paths = []
    for image in images:
        stem = Path(image).stem
        target, k = output / f"{stem}.png", 0
        while target.resolve() in inputs or target.resolve() in taken:
            k += 1
            target = output / f"{stem}_{k}.png"
        taken.add(target.resolve())
        paths.append(target)
    return paths


def _decoded(path: str, progress: str):
    """The whole RGB picture: a file cut short passes the header check and fails here."""
    from detops.data._images import UnreadableImageError, load_rgb

    try:
        return load_rgb("detect", path)
    except UnreadableImageError as error:
        cause = error.__cause__
        raise CommandError(
            f"{path} is an unreadable image ({type(cause).__name__}: {cause}); {progress}"
        ) from cause
