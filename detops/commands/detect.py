"""``python -m detops detect``: run a trained FCOS checkpoint on images, write annotated PNGs."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import COMMANDS

_DESCRIPTION = """\
Run an FCOS checkpoint written by `python -m detops train` on images and write one PNG per
image with the detected boxes, class names and scores drawn on the original picture.

Each image is prepared as in training (Resize + CenterCrop to the checkpoint's image size,
ImageNet normalization); the boxes are mapped back to the original pixels before drawing,
so objects cut off by the centre crop are not detected.
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
        help="where <image name>.png files are written (default: detections)",
    )
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=0.3,
        help="keep detections scoring at least this (default: 0.3, the seed's)",
    )
    parser.add_argument(
        "--nms-thresh", type=float, default=0.5, help="IoU threshold of NMS (default: 0.5)"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="override the checkpoint's input size (default: the size it was trained at)",
    )
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda if available)"
    )
    parser.set_defaults(func=run_detect)


def run_detect(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image
    from torchvision import transforms
    from torchvision.transforms.functional import pil_to_tensor

    from detops.boxes import center_crop_boxes_to_original
    from detops.data import IMAGENET_MEAN, IMAGENET_STD
    from detops.nn import FCOS
    from detops.training import load_checkpoint
    from detops.visualize import save_detections_png

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    missing = [path for path in args.images if not Path(path).is_file()]
    if missing:
        raise SystemExit(f"detops detect: no such image file(s): {', '.join(missing)}")
    state = load_checkpoint(args.checkpoint, map_location="cpu")
    extra = state.get("extra") or {}
    if "model" not in extra:
        raise SystemExit(
            f"detops detect: {args.checkpoint} has no model config; use a checkpoint written "
            "by `python -m detops train`"
        )
    model = FCOS(**extra["model"])
    model.load_state_dict(state["model"])
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
    written: set[Path] = set()
    for path in args.images:
        with Image.open(path) as handle:
            picture = handle.convert("RGB")
        size = (picture.height, picture.width)
        with torch.no_grad():
            (found,) = model(
                transform(picture).unsqueeze(0).to(device),
                test_score_thresh=args.score_thresh,
                test_nms_thresh=args.nms_thresh,
            ).as_dicts()
        boxes = center_crop_boxes_to_original(found["boxes"].cpu().float(), size, image_size)
        target = output / f"{Path(path).stem}.png"
        if target in written:  # two inputs with one name: a.jpg and a.png, or dir1/a dir2/a
            target = output / f"{Path(path).stem}_{len(written)}.png"
        written.add(target)
        save_detections_png(
            target,
            pil_to_tensor(picture),
            boxes=boxes,
            labels=found["labels"].cpu(),
            scores=found["scores"].cpu(),
            class_names=class_names,
        )
        listed = ", ".join(
            f"{class_names[int(c)] if class_names else int(c)} {float(s):.2f}"
            for c, s in zip(found["labels"], found["scores"], strict=True)
        )
        print(f"{path}: {len(boxes)} detections{': ' + listed if listed else ''} -> {target}")
    return 0
