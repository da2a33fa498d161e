"""``python -m detops evaluate``: COCO and VOC mAP of a trained checkpoint, with PR curves."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from detops.cli import CommandError

from . import COMMANDS
from ._checkpoint import (
    check_checkpoint_file,
    check_output_dir,
    check_thresholds,
    load_trained_model,
)
from .train import check_device_name, resolve_device

_DESCRIPTION = """\
Evaluate an FCOS checkpoint written by `python -m detops train` on a split of its data:
prints COCO's 12 numbers (pycocotools' COCOeval, reproduced exactly by
detops.metrics.mean_average_precision(protocol="coco")), the VOC devkit's mAP@0.5 and AP
per class, and writes into --output-dir:

  metrics.json    every number printed, per class too
  pr_curves.png   per class, COCO precision against recall at IoU 0.5 and 0.75
                  (area all, 100 detections per image)

By default it reads the data the checkpoint was trained on (its stored --data).
--data synthetic regenerates (or reuses) the synthetic set the checkpoint was trained on,
with the parameters stored in it; --data PATH reads PATH/voc07_<split>.json. Boxes are
scored in the resized, centre-cropped frame the model sees, so COCO's small / medium /
large ranges (32 and 96 px sides) refer to that frame.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help=COMMANDS["evaluate"],
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT",
        help="checkpoint.pt written by `python -m detops train`",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="synthetic|PATH",
        help="'synthetic' (the checkpoint's own synthetic set) or a folder holding "
        "voc07_<split>.json (default: the data the checkpoint was trained on)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="where the synthetic set lives (default: the one the checkpoint was trained on)",
    )
    parser.add_argument(
        "--split",
        default="val",
        choices=("train", "val"),
        help="which split of the data to score (default: val)",
    )
    parser.add_argument(
        "--output-dir",
        default="runs/evaluate",
        metavar="DIR",
        help="metrics.json and pr_curves.png go here (default: runs/evaluate)",
    )
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=0.05,
        help="keep detections scoring above this for mAP (default: 0.05)",
    )
    parser.add_argument(
        "--nms-thresh", type=float, default=0.5, help="IoU threshold of NMS (default: 0.5)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="images per forward pass (default: 8)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N or auto (default: auto, cuda if available)",
    )
    parser.set_defaults(func=run_evaluate)


def _check_args(args: argparse.Namespace) -> None:
    """Usage errors, found before anything is imported or loaded."""
    check_thresholds(args, ("score_thresh", "nms_thresh"))
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_device_name(args.device)
    check_checkpoint_file(args.checkpoint)
    if args.data not in (None, "synthetic"):
        _check_data_folder("--data", args.data, args.split)
    if args.data_dir is not None and Path(args.data_dir).expanduser().is_file():
        raise CommandError(f"--data-dir {args.data_dir} exists and is not a folder")
    check_output_dir(args.output_dir)


def _check_data_folder(option: str, data: str, split: str) -> None:
    root = Path(data).expanduser()
    if not root.is_dir():
        kind = "a file, not a folder" if root.exists() else "no such folder"
        raise CommandError(f"{option} must be 'synthetic' or a folder, got {data!r} ({kind})")
    if not (root / f"voc07_{split}.json").is_file():
        raise CommandError(f"{option} {data}: the folder has no voc07_{split}.json")


def _data_of(args: argparse.Namespace, stored: dict) -> str:
    """--data as given, else the data the checkpoint was trained on (checked like --data)."""
    trained_on = str(stored.get("data") or "synthetic")
    if args.data == "synthetic" and trained_on != "synthetic":  # (before a set is written)
        raise CommandError(
            f"--data synthetic, but the checkpoint was trained on --data {trained_on}, not "
            "on the synthetic set; pass --data PATH (or leave --data out for its own data)"
        )
    if args.data is not None:
        return args.data
    if trained_on != "synthetic":
        try:
            _check_data_folder("the checkpoint's data", trained_on, args.split)
        except CommandError as error:
            raise CommandError(f"{error}; pass --data PATH") from None
    return trained_on


def _dataset(args: argparse.Namespace, data: str, extra: dict, class_names: list[str]):
    """The split to score; what the loader finds wrong with the data is an input error."""
    try:
        return _load_dataset(args, data, extra, class_names)
    except (ValueError, FileNotFoundError) as error:
        raise CommandError(str(error)) from error


def _load_dataset(args: argparse.Namespace, data: str, extra: dict, class_names: list[str]):
    from detops.data import VOC2007DetectionTiny, make_synthetic_detection_dataset

    stored = extra.get("args") or {}
    image_size = int(extra["image_size"])
    if data == "synthetic":
        root = Path(args.data_dir or stored.get("data_dir") or "data/synthetic")
        make_synthetic_detection_dataset(
            root,
            num_train=int(stored.get("num_train", 512)),
            num_val=int(stored.get("num_val", 128)),
            image_size=image_size,
            seed=int(stored.get("seed", 0)),
        )
    else:
        root = Path(data).expanduser()
    return VOC2007DetectionTiny(
        root,
        args.split,
        image_size=image_size,
        max_boxes=int(stored.get("max_boxes", 40)),
        class_names=tuple(class_names),
    )


_ROWS = (
    ("map", "AP @[IoU=0.50:0.95 | area=   all | maxDets=100]"),
    ("map_50", "AP @[IoU=0.50      | area=   all | maxDets=100]"),
    ("map_75", "AP @[IoU=0.75      | area=   all | maxDets=100]"),
    ("map_small", "AP @[IoU=0.50:0.95 | area= small | maxDets=100]"),
    ("map_medium", "AP @[IoU=0.50:0.95 | area=medium | maxDets=100]"),
    ("map_large", "AP @[IoU=0.50:0.95 | area= large | maxDets=100]"),
    ("mar_1", "AR @[IoU=0.50:0.95 | area=   all | maxDets=  1]"),
    ("mar_10", "AR @[IoU=0.50:0.95 | area=   all | maxDets= 10]"),
    ("mar_100", "AR @[IoU=0.50:0.95 | area=   all | maxDets=100]"),
    ("mar_small", "AR @[IoU=0.50:0.95 | area= small | maxDets=100]"),
    ("mar_medium", "AR @[IoU=0.50:0.95 | area=medium | maxDets=100]"),
    ("mar_large", "AR @[IoU=0.50:0.95 | area= large | maxDets=100]"),
)


def _pr_curves_png(path: Path, coco: dict, class_names: list[str]) -> Path:
    """One panel per class: COCO precision at the 101 recall points, IoU 0.5 and 0.75."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from detops._atomic import atomic_write_bytes

    count = len(class_names)
    columns = min(count, 4)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(3.2 * columns, 2.8 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    recall = coco["rec_thresholds"].tolist()
    precision = coco["precision"]  # [T, R, C, A, M]
    thresholds = coco["iou_thresholds"].tolist()
    for index, name in enumerate(class_names):
        axes = figure.add_subplot(rows, columns, index + 1)
        for t, style in ((0, "-"), (5, "--")):
            curve = precision[t, :, index, 0, 2]
            if bool((curve < 0).all()):
                continue  # no GT of this class: COCOeval has no curve
            axes.plot(recall, curve.tolist(), style, label=f"IoU {thresholds[t]:.2f}")
        ap = float(coco["map_per_class"][index])
        title = f"{name}: AP {ap:.3f}" if ap >= 0 else f"{name}: no GT"
        axes.set_title(title, fontsize=9)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.02)
        axes.set_xlabel("recall", fontsize=8)
        axes.set_ylabel("precision", fontsize=8)
        axes.tick_params(labelsize=7)
        if ap >= 0:
            axes.legend(fontsize=7, loc="lower left")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


def run_evaluate(args: argparse.Namespace) -> int:
    _check_args(args)

    import torch
    from torch.utils.data import DataLoader

    from detops._atomic import atomic_write_text
    from detops.metrics import mean_average_precision
    from detops.training import predict_detections

    device = resolve_device(args.device)
    model, extra = load_trained_model(args.checkpoint)
    model.to(device).eval()
    num_classes = int(extra["model"]["num_classes"])
    class_names = list(extra.get("class_names") or [str(c) for c in range(num_classes)])
    data = _data_of(args, extra.get("args") or {})
    dataset = _dataset(args, data, extra, class_names)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False)
    with torch.no_grad():
        detections, ground_truths = predict_detections(
            model, loader, score_thresh=args.score_thresh, nms_thresh=args.nms_thresh, device=device
        )
    coco = mean_average_precision(detections, ground_truths, num_classes, protocol="coco")
    voc = mean_average_precision(detections, ground_truths, num_classes)

    count = sum(len(d["scores"]) for d in detections)
    print(
        f"detops evaluate: {args.checkpoint} on {len(dataset)} {args.split} images "
        f"({count} detections at score > {args.score_thresh})"
    )
    for key, label in _ROWS:
        print(f" Average {'Precision' if key.startswith('map') else 'Recall   '} {label} = "
              f"{float(coco[key]):.3f}")  # fmt: skip
    voc_map = float(voc["map"])
    print(f" VOC devkit mAP@0.5 = {voc_map:.3f}")
    width = max(len(n) for n in class_names)
    print(f" {'class':<{width}}  COCO AP  VOC AP50")
    per_class = []
    for index, name in enumerate(class_names):
        coco_ap = float(coco["map_per_class"][index])
        voc_ap = float(voc["ap_per_class"][index])
        per_class.append(
            {
                "class": name,
                "coco_ap": None if coco_ap < 0 else coco_ap,
                "coco_ar_100": None if coco_ap < 0 else float(coco["mar_100_per_class"][index]),
                "voc_ap50": None if math.isnan(voc_ap) else voc_ap,
            }
        )
        shown = [f"{v:8.3f}" if v is not None else "       -" for v in (
            per_class[-1]["coco_ap"], per_class[-1]["voc_ap50"])]  # fmt: skip
        print(f" {name:<{width}} {shown[0]}  {shown[1]}")

    output = Path(args.output_dir)
    report = {
        "checkpoint": str(args.checkpoint),
        "data": data,
        "split": args.split,
        "images": len(dataset),
        "detections": count,
        "score_thresh": args.score_thresh,
        "nms_thresh": args.nms_thresh,
        "coco": {key: float(coco[key]) for key, _ in _ROWS},
        "voc_map_50": None if math.isnan(voc_map) else voc_map,
        "per_class": per_class,
    }
    metrics_path = atomic_write_text(output / "metrics.json", json.dumps(report, indent=2) + "\n")
    curves = _pr_curves_png(output / "pr_curves.png", coco, class_names)
    print(f"wrote {metrics_path} and {curves}")
    return 0
