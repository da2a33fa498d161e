"""``python -m detops train``: train FCOS on the synthetic set or a VOC-format folder."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from . import COMMANDS

_DESCRIPTION = """\
Train the FCOS detector (RegNetX-400MF + FPN, detops ops) and report mAP@0.5 on the val split.

--data synthetic writes (once) a synthetic set of coloured shapes in the course's VOC JSON
format under --data-dir and trains on it; --data PATH reads PATH/voc07_train.json and
PATH/voc07_val.json (the course's tiny VOC2007 layout). Everything goes to --output-dir:
checkpoint.pt (written atomically every --checkpoint-every iterations; a re-run with the same
arguments resumes from it exactly), loss_curve.png and metrics.json.
"""

_EPILOG = """\
examples:
  python -m detops train --data synthetic
  python -m detops train --data synthetic --threads 1 --output-dir runs/synthetic
  python -m detops train --data ~/voc2007 --image-size 224 --iterations 9000 --device cuda \\
      --backbone-weights IMAGENET1K_V2
  python -m detops detect --checkpoint runs/train/checkpoint.pt photo.jpg
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help=COMMANDS["train"],
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default="synthetic",
        metavar="synthetic|PATH",
        help="'synthetic' (generated, no download) or a folder holding voc07_train.json and "
        "voc07_val.json in the course format (default: synthetic)",
    )
    data.add_argument(
        "--data-dir",
        default="data/synthetic",
        metavar="DIR",
        help="where --data synthetic writes its images and JSON; reused when the parameters "
        "match (default: data/synthetic)",
    )
    data.add_argument(
        "--num-train", type=int, default=512, help="synthetic train images (default: 512)"
    )
    data.add_argument(
        "--num-val", type=int, default=128, help="synthetic val images (default: 128)"
    )
    data.add_argument(
        "--classes",
        default=None,
        metavar="A,B,...",
        help="comma-separated class names in label order for --data PATH "
        "(default: the 20 VOC classes; synthetic: circle,square,triangle,cross)",
    )
    data.add_argument(
        "--image-size",
        type=int,
        default=64,
        help="square input side in pixels: Resize + CenterCrop; also the synthetic images' "
        "size (default: 64)",
    )
    data.add_argument(
        "--max-boxes", type=int, default=40, help="GT rows per image after padding (default: 40)"
    )
    data.add_argument(
        "--workers", type=int, default=0, help="DataLoader worker processes (default: 0)"
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--fpn-channels", type=int, default=64, help="channels of every FPN level (default: 64)"
    )
    model.add_argument(
        "--stem-channels",
        type=int,
        nargs="+",
        default=[64],
        metavar="C",
        help="channels of each head stem conv, one number per conv; '256 256 256 256' is "
        "the FCOS paper's head (default: 64, one conv)",
    )
    model.add_argument(
        "--backbone-weights",
        default=None,
        metavar="PATH|NAME",
        help="backbone init: a local regnet_x_400mf state_dict file, or a torchvision weights "
        "name (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT) to download (default: random init)",
    )
    model.add_argument(
        "--center-sampling-radius",
        type=float,
        default=None,
        metavar="R",
        help="match only locations within R strides of a box centre (default: off, as the seed)",
    )

    optim = parser.add_argument_group("optimization")
    optim.add_argument(
        "--iterations", type=int, default=300, help="SGD steps in total (default: 300)"
    )
    optim.add_argument("--batch-size", type=int, default=16, help="images per step (default: 16)")
    optim.add_argument("--lr", type=float, default=0.02, help="peak learning rate (default: 0.02)")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    optim.add_argument(
        "--weight-decay", type=float, default=1e-4, help="SGD weight decay (default: 1e-4)"
    )
    optim.add_argument(
        "--warmup-iterations",
        type=int,
        default=30,
        help="linear lr warmup steps from 0.001 x lr (default: 30; 0 disables)",
    )
    optim.add_argument(
        "--clip-grad-norm",
        type=float,
        default=10.0,
        metavar="NORM",
        help="clip the global gradient norm (default: 10; 0 disables)",
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--output-dir",
        default="runs/train",
        metavar="DIR",
        help="checkpoint.pt, loss_curve.png and metrics.json go here (default: runs/train)",
    )
    run.add_argument(
        "--checkpoint-every",
        type=int,
        default=50,
        metavar="N",
        help="write the checkpoint every N iterations (default: 50)",
    )
    run.add_argument(
        "--no-resume",
        action="store_true",
        help="start over even if --output-dir holds a checkpoint of this run",
    )
    run.add_argument("--seed", type=int, default=0, help="seed for every RNG (default: 0)")
    run.add_argument(
        "--deterministic", action="store_true", help="deterministic cuDNN kernels (GPU only)"
    )
    run.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda if available)"
    )
    run.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine)",
    )
    run.add_argument(
        "--eval-score-thresh",
        type=float,
        default=0.05,
        help="score threshold of the detections scored for mAP (default: 0.05)",
    )
    run.add_argument(
        "--nms-thresh", type=float, default=0.5, help="IoU threshold of NMS (default: 0.5)"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_train)


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _datasets(args: argparse.Namespace):
    from detops.data import (
        SYNTHETIC_CLASSES,
        VOC2007DetectionTiny,
        make_synthetic_detection_dataset,
    )

    if args.data == "synthetic":
        root = Path(args.data_dir)
        make_synthetic_detection_dataset(
            root,
            num_train=args.num_train,
            num_val=args.num_val,
            image_size=args.image_size,
            seed=args.seed,
        )
        names = tuple(args.classes.split(",")) if args.classes else SYNTHETIC_CLASSES
    else:
        root = Path(args.data).expanduser()
        if not root.is_dir():
            raise SystemExit(
                f"detops train: --data must be 'synthetic' or a folder, got {args.data!r} "
                "(no such folder)"
            )
        from detops.data import VOC_CLASSES

        names = tuple(args.classes.split(",")) if args.classes else VOC_CLASSES
    kwargs = {"image_size": args.image_size, "max_boxes": args.max_boxes, "class_names": names}
    return (
        VOC2007DetectionTiny(root, "train", **kwargs),
        VOC2007DetectionTiny(root, "val", **kwargs),
        names,
    )


def run_train(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from detops.nn import FCOS
    from detops.training import evaluate_detector, seed_everything, train_detector

    for name in ("iterations", "batch_size", "image_size", "checkpoint_every", "fpn_channels"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"detops train: --{name.replace('_', '-')} must be > 0")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    seed_everything(args.seed, deterministic=args.deterministic)
    train_set, val_set, class_names = _datasets(args)
    model_config = {
        "num_classes": len(class_names),
        "fpn_channels": args.fpn_channels,
        "stem_channels": list(args.stem_channels),
        "center_sampling_radius": args.center_sampling_radius,
    }
    model = FCOS(**model_config, backbone_weights=args.backbone_weights).to(device)
    loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=len(train_set) >= args.batch_size,
        num_workers=args.workers,
        generator=torch.Generator().manual_seed(args.seed),
        pin_memory=device.type == "cuda",
    )
    print(
        f"detops train: {len(train_set)} train / {len(val_set)} val images of "
        f"{args.image_size} px, {len(class_names)} classes, {args.iterations} iterations of "
        f"{args.batch_size} on {device} ({torch.get_num_threads()} threads)",
        flush=True,
    )
    result = train_detector(
        model,
        loader,
        iterations=args.iterations,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        warmup_iterations=args.warmup_iterations,
        clip_grad_norm=args.clip_grad_norm or None,
        device=device,
        checkpoint_path=output / "checkpoint.pt",
        checkpoint_every=args.checkpoint_every,
        resume=not args.no_resume,
        loss_curve_path=output / "loss_curve.png",
        progress=not args.no_progress,
        extra_state={
            "model": model_config,
            "class_names": list(class_names),
            "image_size": args.image_size,
            "args": {k: v for k, v in vars(args).items() if k != "func"},
        },
    )
    trained = time.perf_counter()
    val_loader = DataLoader(val_set, batch_size=args.batch_size, num_workers=args.workers)
    metrics = evaluate_detector(
        model,
        val_loader,
        len(class_names),
        score_thresh=args.eval_score_thresh,
        nms_thresh=args.nms_thresh,
        device=device,
    )
    finished = time.perf_counter()
    # NaN (a class, or every class, without GT in the val split) is written as null.
    ap = [None if math.isnan(a) else a for a in metrics["ap_per_class"].tolist()]
    map_50 = float(metrics["map"])
    report = {
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "map_50": None if math.isnan(map_50) else map_50,
        "ap_per_class": dict(zip(class_names, ap, strict=True)),
        "iterations": result.iterations,
        "resumed_from": result.resumed_from,
        "final_losses": {k: v[-1] for k, v in result.history.items() if v},
        "train_seconds": round(trained - started, 1),
        "eval_seconds": round(finished - trained, 1),
        "total_seconds": round(finished - started, 1),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "checkpoint": str(result.checkpoint_path),
        "loss_curve": str(result.loss_curve_path) if result.loss_curve_path else None,
    }
    tmp = output / ".metrics.json.tmp"
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, output / "metrics.json")

    def fmt(value: float | None, digits: int) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    print(
        f"val mAP@0.5 = {fmt(report['map_50'], 4)}  ("
        + ", ".join(f"{n} {fmt(a, 3)}" for n, a in report["ap_per_class"].items())
        + f")\ntrain {report['train_seconds']} s, eval {report['eval_seconds']} s; "
        f"wrote {output / 'checkpoint.pt'}, {report['loss_curve']}, {output / 'metrics.json'}",
        flush=True,
    )
    return 0
