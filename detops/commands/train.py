"""``python -m detops train``: train FCOS on the synthetic set or a VOC-format folder."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detops._interrupt import interrupts_ignored
from detops.cli import CommandError

from . import COMMANDS

_DESCRIPTION = """\
Train the FCOS detector (RegNetX-400MF + FPN, detops ops) and report mAP@0.5 on the val split.

--data synthetic writes (once) a synthetic set of coloured shapes in the course's VOC JSON
format under --data-dir and trains on it; --data PATH reads PATH/voc07_train.json and
PATH/voc07_val.json (the course's tiny VOC2007 layout). Everything goes to --output-dir:
checkpoint.pt (written atomically every --checkpoint-every iterations and on Ctrl-C; a re-run
with the same arguments resumes from it exactly), loss_curve.png, val_grid.png (val images
with predictions and ground truth) and metrics.json.

Arguments are checked before anything is loaded: a bad one prints one line and exits 2.
Ctrl-C saves the checkpoint, prints the command that resumes and exits 130.
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
        help="square input side in pixels, at least 64: Resize + CenterCrop; also the "
        "synthetic images' size (default: 64)",
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
        help="match only locations within R strides of a box centre "
        "(default: off, as the course code)",
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
        help="checkpoint.pt, loss_curve.png, val_grid.png and metrics.json go here "
        "(default: runs/train)",
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
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N or auto (default: auto, cuda if available)",
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


#: The smallest --image-size: the coarsest FPN level (stride 32) needs 2 x 2 locations, and
#: training-mode batch norm needs more than one value per channel at a batch of one image.
MIN_IMAGE_SIZE = 64
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
_WEIGHT_NAMES = ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT")
# Arguments that do not describe the run (not stored in the checkpoint or metrics.json).
_NOT_STORED = ("func", "argv", "debug", "command")
# Options that decide what a run computes: a re-run resumes only with the values it started
# with (a resumed run would silently keep its own, and metrics.json would record the new).
_RUN_DEFINING = (
    "num_train",  # (these two for the synthetic set only)
    "num_val",
    "classes",
    "max_boxes",
    "backbone_weights",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "warmup_iterations",
    "clip_grad_norm",
    "seed",
    "deterministic",
)


def check_device_name(name: str) -> None:
    """Reject a --device that is not auto, cpu, cuda or cuda:N (no torch import)."""
    if not _DEVICE_PATTERN.fullmatch(name):
        raise CommandError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")


def resolve_device(name: str):
    """The torch.device for a checked --device; a CUDA device must exist (one-line error)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError(
                f"--device {name}, but CUDA is not available here (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda}); use --device cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise CommandError(f"--device {name}, but this machine has {count} CUDA device(s)")
    return device


def _check_args(args: argparse.Namespace) -> None:
    """Every check that needs neither torch nor the data: a usage error, before loading."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise CommandError(message)

    for name in ("iterations", "batch_size", "checkpoint_every", "fpn_channels", "max_boxes"):
        value = getattr(args, name)
        need(value >= 1, f"--{name.replace('_', '-')} must be >= 1, got {value}")
    need(
        all(c >= 1 for c in args.stem_channels),
        f"--stem-channels must all be >= 1, got {' '.join(map(str, args.stem_channels))}",
    )
    if args.data == "synthetic":
        need(args.num_train >= 1, f"--num-train must be >= 1, got {args.num_train}")
        need(args.num_val >= 1, f"--num-val must be >= 1, got {args.num_val}")
    need(
        args.image_size >= MIN_IMAGE_SIZE,
        f"--image-size must be at least {MIN_IMAGE_SIZE} (the FPN's coarsest level has stride "
        f"32 and needs 2 x 2 locations), got {args.image_size}",
    )
    need(math.isfinite(args.lr) and args.lr > 0, f"--lr must be a finite number > 0, got {args.lr}")
    need(0 <= args.momentum < 1, f"--momentum must lie in [0, 1), got {args.momentum}")
    need(
        math.isfinite(args.weight_decay) and args.weight_decay >= 0,
        f"--weight-decay must be a finite number >= 0, got {args.weight_decay}",
    )
    need(
        args.warmup_iterations >= 0,
        f"--warmup-iterations must be >= 0, got {args.warmup_iterations}",
    )
    need(
        math.isfinite(args.clip_grad_norm) and args.clip_grad_norm >= 0,
        f"--clip-grad-norm must be a finite number >= 0 (0 disables), got {args.clip_grad_norm}",
    )
    if args.center_sampling_radius is not None:
        radius = args.center_sampling_radius
        need(
            math.isfinite(radius) and radius > 0,
            f"--center-sampling-radius must be a finite number > 0, got {radius}",
        )
    need(args.threads is None or args.threads >= 1, f"--threads must be >= 1, got {args.threads}")
    need(args.workers >= 0, f"--workers must be >= 0, got {args.workers}")
    need(args.seed >= 0, f"--seed must be >= 0, got {args.seed}")
    for name in ("eval_score_thresh", "nms_thresh"):
        value = getattr(args, name)
        need(0 <= value <= 1, f"--{name.replace('_', '-')} must lie in [0, 1], got {value}")
    if args.classes is not None:
        names = [n.strip() for n in args.classes.split(",")]
        need(all(names), f"--classes has an empty name: {args.classes!r}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        need(not repeated, f"--classes names {', '.join(repeated)} more than once")
        need(
            args.data != "synthetic",
            "--classes is for --data PATH: the synthetic set's classes are fixed "
            "(circle,square,triangle,cross)",
        )
    check_device_name(args.device)
    if args.backbone_weights is not None and args.backbone_weights not in _WEIGHT_NAMES:
        need(
            Path(args.backbone_weights).expanduser().is_file(),
            f"--backbone-weights must be a state_dict file or one of {', '.join(_WEIGHT_NAMES)}"
            f", got {args.backbone_weights!r} (no such file)",
        )
    if args.data != "synthetic":
        root = Path(args.data).expanduser()
        need(
            root.is_dir(),
            f"--data must be 'synthetic' or a folder, got {args.data!r} "
            f"({'a file, not a folder' if root.exists() else 'no such folder'})",
        )
        for split in ("train", "val"):
            need(
                (root / f"voc07_{split}.json").is_file(),
                f"--data {args.data}: the folder has no voc07_{split}.json",
            )
    output = Path(args.output_dir)
    need(
        not output.exists() or output.is_dir(),
        f"--output-dir {args.output_dir} exists and is not a folder",
    )
    if args.data == "synthetic":
        data_dir = Path(args.data_dir).expanduser()
        need(
            not data_dir.exists() or data_dir.is_dir(),
            f"--data-dir {args.data_dir} exists and is not a folder",
        )


def resume_command(argv: Sequence[str]) -> str:
    """The command line that resumes a run started with ``argv`` (without --no-resume),
    with this interpreter (a bare ``python`` may be another one, without detops)."""
    return shlex.join([sys.executable, "-m", "detops", *[a for a in argv if a != "--no-resume"]])


def _check_resume(
    checkpoint: Path, args: argparse.Namespace, model_config: dict, identity: str
) -> int:
    """The iteration a re-run resumes from (0: a fresh run); a checkpoint of another run is
    a usage error naming --no-resume. ``identity``: this run's :func:`_data_identity`."""
    if args.no_resume or not checkpoint.exists():
        return 0
    from detops.training import load_checkpoint

    start_over = f"pass --no-resume to start over (it overwrites {checkpoint})"
    try:
        state = load_checkpoint(checkpoint, map_location="cpu")
    except Exception as error:
        raise CommandError(
            f"{checkpoint} is not a checkpoint this command can resume "
            f"({type(error).__name__}); {start_over}, or choose another --output-dir"
        ) from error
    extra = state.get("extra") or {}
    stored = state.get("total_iterations")
    if stored != args.iterations:
        raise CommandError(
            f"{checkpoint} holds a run of --iterations {stored}, got --iterations "
            f"{args.iterations}; pass --iterations {stored} to resume it, or {start_over}"
        )
    for what, old, new in (
        ("model", extra.get("model"), model_config),
        ("--image-size", extra.get("image_size"), args.image_size),
    ):
        if old is not None and old != new:
            raise CommandError(
                f"{checkpoint} holds a run with another {what} ({old}, got {new}); {start_over}"
            )
    stored_identity = extra.get("data_identity")
    if stored_identity is not None and stored_identity != identity:
        started = (extra.get("args") or {}).get("data", "?")
        raise CommandError(
            f"{checkpoint} holds a run on other data ({started}; --data {args.data} differs "
            f"in kind or in its voc07_train.json / voc07_val.json); {start_over}"
        )
    stored_args = extra.get("args") or {}
    unused = ("num_train", "num_val") if args.data != "synthetic" else ()
    for name in _RUN_DEFINING:
        if name in unused:
            continue
        if name in stored_args and stored_args[name] != getattr(args, name):
            option = f"--{name.replace('_', '-')}"
            started = _as_given(option, stored_args[name])
            raise CommandError(
                f"{checkpoint} holds a run started {started}, not "
                f"{_as_given(option, getattr(args, name))} (a resumed run keeps its own "
                f"settings); run it {started} to resume it, or {start_over}"
            )
    return int(state.get("iteration", 0))


def _data_identity(args: argparse.Namespace) -> str:
    """What makes two runs' data the same wherever it lies: the synthetic set (its
    parameters are options of their own), or the SHA-256 of a folder's two JSON files."""
    if args.data == "synthetic":
        return "synthetic"
    digest = hashlib.sha256()
    for split in ("train", "val"):
        digest.update((Path(args.data).expanduser() / f"voc07_{split}.json").read_bytes())
    return f"voc07 json sha256 {digest.hexdigest()}"


def _as_given(option: str, value: object) -> str:
    """How an option's value reads on a command line: ``with --lr 0.02``, ``without
    --classes``, ``with --deterministic``."""
    if value is None or value is False:
        return f"without {option}"
    return f"with {option}" if value is True else f"with {option} {value}"


def _class_names(args: argparse.Namespace) -> tuple[str, ...]:
    from detops.data import SYNTHETIC_CLASSES, VOC_CLASSES

    if args.classes:
        return tuple(n.strip() for n in args.classes.split(","))
    return SYNTHETIC_CLASSES if args.data == "synthetic" else VOC_CLASSES


def _datasets(args: argparse.Namespace, class_names: tuple[str, ...]):
    """The train and val sets; what is wrong with the data (a ValueError or a missing
    file from the loaders) is an input error."""
    try:
        return _load_datasets(args, class_names)
    except (ValueError, FileNotFoundError) as error:
        raise CommandError(str(error)) from error


def _load_datasets(args: argparse.Namespace, class_names: tuple[str, ...]):
    from detops.data import VOC2007DetectionTiny, make_synthetic_detection_dataset

    if args.data == "synthetic":
        root = Path(args.data_dir)
        make_synthetic_detection_dataset(
            root,
            num_train=args.num_train,
            num_val=args.num_val,
            image_size=args.image_size,
            seed=args.seed,
        )
    else:
        root = Path(args.data).expanduser()
    kwargs = {"image_size": args.image_size, "max_boxes": args.max_boxes}
    kwargs["class_names"] = class_names
    return VOC2007DetectionTiny(root, "train", **kwargs), VOC2007DetectionTiny(
        root, "val", **kwargs
    )


def _silent(*args, **kwargs) -> None:
    """print for ranks other than 0."""


@dataclass
class _Written:
    """The outputs a run has completed, for the line a Ctrl-C prints once training is done."""

    complete: list[str] = field(default_factory=list)  # e.g. "checkpoint.pt (iteration 2 of 2)"
    missing: list[str] = field(default_factory=list)


def run_train(args: argparse.Namespace) -> int:
    _check_args(args)  # usage errors first: nothing is imported or written before them
    main = int(os.environ.get("RANK", "0")) == 0  # (under torchrun, rank 0 speaks and writes)
    created = _missing_folders(Path(args.output_dir)) if main else []
    written = _Written()
    try:
        return _run_train(args, written)
    except KeyboardInterrupt:  # before or after the training loop (whose handler says more)
        if main:
            with interrupts_ignored():
                print("\n" + _interrupted_line(args, written), file=sys.stderr, flush=True)
        return 130
    finally:
        _remove_if_left_empty(created)


def _interrupted_line(args: argparse.Namespace, written: _Written) -> str:
    """What a Ctrl-C outside the training loop prints: before it, how to resume; after it,
    which outputs are complete (each written atomically: whole or not at all)."""
    if not written.complete:
        return f"detops train: interrupted; resume with: {resume_command(_argv(args))}"
    if not written.missing:
        return (
            f"detops train: Ctrl-C after the run finished; nothing was lost: "
            f"{', '.join(written.complete)} in {Path(args.output_dir)} are complete"
        )
    return (
        f"detops train: interrupted after training finished; complete in {args.output_dir}: "
        f"{', '.join(written.complete)}; not written: {', '.join(written.missing)}; the same "
        f"command evaluates the trained model and writes them: {resume_command(_argv(args))}"
    )


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first: the
    folders this run creates."""
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    return missing


def _remove_if_left_empty(created: Sequence[Path]) -> None:
    """Remove the folders of ``created`` (deepest first) that a failed or interrupted run
    left empty; rmdir refuses a folder with anything in it, which stops the walk."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:  # not empty, or never created
            if folder.exists():
                break


def _argv(args: argparse.Namespace) -> Sequence[str]:
    """The command line as given (set by the CLI's main()), for the resume hint."""
    return getattr(args, "argv", None) or ["train"]


def _run_train(args: argparse.Namespace, written: _Written) -> int:
    # Under torchrun (WORLD_SIZE > 1): one process per rank, DistributedDataParallel.
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _train(args, written, rank=0, world=1)
    import torch
    import torch.distributed as dist

    use_cuda = resolve_device(args.device).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        return _train(args, written, rank=dist.get_rank(), world=dist.get_world_size())
    finally:
        dist.destroy_process_group()


def _train(args: argparse.Namespace, written: _Written, *, rank: int, world: int) -> int:
    """Train, evaluate and report; with ``world > 1`` in an initialized process group,
    where only rank 0 prints and writes files. ``written`` follows the outputs completed
    after training."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    from detops._atomic import atomic_write_text
    from detops.nn import FCOS
    from detops.training import (
        evaluate_detector,
        final_running_average,
        load_checkpoint,
        save_validation_grid,
        seed_everything,
        train_detector,
    )

    main = rank == 0
    device = resolve_device(args.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # an application may set process-wide state
    output = Path(args.output_dir)
    checkpoint = output / "checkpoint.pt"
    argv = _argv(args)
    # Stored (and recorded in metrics.json) as absolute paths: evaluate finds the data from
    # any working directory.
    if args.data != "synthetic":
        args.data = str(Path(args.data).expanduser().resolve())
    args.data_dir = str(Path(args.data_dir).expanduser().resolve())
    stored_args = {k: v for k, v in vars(args).items() if k not in _NOT_STORED}

    started = time.perf_counter()
    class_names = _class_names(args)
    model_config = {
        "num_classes": len(class_names),
        "fpn_channels": args.fpn_channels,
        "stem_channels": list(args.stem_channels),
        "center_sampling_radius": args.center_sampling_radius,
    }
    identity = _data_identity(args)
    resume_from = _check_resume(checkpoint, args, model_config, identity)
    seed_everything(args.seed + rank, deterministic=args.deterministic)  # per-rank streams
    if world > 1:  # rank 0 writes the synthetic set (once); the others then read it
        if main:
            _datasets(args, class_names)
        torch.distributed.barrier()
    train_set, val_set = _datasets(args, class_names)
    output.mkdir(parents=True, exist_ok=True)
    model = FCOS(**model_config, backbone_weights=args.backbone_weights).to(device)
    train_sampler: DistributedSampler | None = None
    val_sampler: DistributedSampler | None = None
    if world > 1:
        # Each rank takes batch_size images of a shard; reshuffled per epoch (train_detector
        # calls set_epoch). Evaluation shards in order; the predictions are gathered.
        train_sampler = DistributedSampler(train_set, seed=args.seed, drop_last=True)
        val_sampler = DistributedSampler(val_set, shuffle=False)
    loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=train_sampler is None,
        sampler=train_sampler,
        drop_last=len(train_set) >= args.batch_size * world,
        num_workers=args.workers,
        generator=torch.Generator().manual_seed(args.seed),
        pin_memory=device.type == "cuda",
    )
    say = print if main else _silent
    world_note = f", {world} processes" if world > 1 else ""
    say(
        f"detops train: {len(train_set)} train / {len(val_set)} val images of "
        f"{args.image_size} px, {len(class_names)} classes, {args.iterations} iterations of "
        f"{args.batch_size}{' per process' if world > 1 else ''} on {device} "
        f"({torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}"
        f"{world_note})",
        flush=True,
    )
    if args.warmup_iterations >= args.iterations:
        say(
            f"detops train: note: the lr warm-up ({args.warmup_iterations} iterations, "
            f"--warmup-iterations) is not shorter than the run ({args.iterations}): the "
            f"learning rate never reaches --lr {args.lr:g}",
            flush=True,
        )
    if device.type == "cpu" and args.threads is None and torch.get_num_threads() > 1:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        cpus = os.cpu_count() or 1
        if load is not None and load > cpus / 2:
            say(
                f"detops train: note: the machine is busy (load average {load:.2f} on {cpus} "
                "CPUs); torch's threads spin-wait against the other work, which can make "
                "training many times slower: --threads 1 (or OMP_WAIT_POLICY=passive) avoids "
                "it",
                file=sys.stderr,
                flush=True,
            )
    if resume_from:
        say(
            f"detops train: resuming from iteration {resume_from} of {args.iterations} "
            f"({checkpoint}; --no-resume starts over)",
            flush=True,
        )
    try:
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
            checkpoint_path=checkpoint,
            checkpoint_every=args.checkpoint_every,
            resume=not args.no_resume,
            loss_curve_path=output / "loss_curve.png",
            progress=not args.no_progress,
            extra_state={
                "data_identity": identity,
                "model": model_config,
                "class_names": list(class_names),
                "image_size": args.image_size,
                "args": stored_args,
            },
        )
    except KeyboardInterrupt:
        with interrupts_ignored():  # (a second Ctrl-C must not cut this line short)
            saved = None
            if checkpoint.exists():
                saved = int(load_checkpoint(checkpoint)["iteration"])
            where = (
                f"checkpoint at iteration {saved} of {args.iterations} in {checkpoint}"
                if saved
                else "no checkpoint written yet"
            )
            say(
                f"\ndetops train: interrupted; {where}; resume with: {resume_command(argv)}",
                file=sys.stderr,
                flush=True,
            )
        return 130
    trained = time.perf_counter()
    written.complete = [f"{checkpoint.name} (iteration {result.iterations} of {args.iterations})"]
    written.complete += [result.loss_curve_path.name] if result.loss_curve_path else []
    written.missing = ["val_grid.png", "metrics.json"]
    val_loader = DataLoader(
        val_set, batch_size=args.batch_size, sampler=val_sampler, num_workers=args.workers
    )
    metrics = evaluate_detector(
        model,
        val_loader,
        len(class_names),
        score_thresh=args.eval_score_thresh,
        nms_thresh=args.nms_thresh,
        device=device,
        coco=True,
    )
    if not main:
        return 0
    grid = save_validation_grid(
        model,
        val_set,
        output / "val_grid.png",
        class_names=class_names,
        score_thresh=max(args.eval_score_thresh, 0.3),
        nms_thresh=args.nms_thresh,
        device=device,
    )
    written.complete.append(written.missing.pop(0))
    finished = time.perf_counter()
    # NaN (a class, or every class, without GT in the val split) is written as null.
    ap = [None if math.isnan(a) else a for a in metrics["ap_per_class"].tolist()]
    map_50 = float(metrics["map"])
    # The progress bar shows running averages; metrics.json records the same numbers
    # (final_losses) and the last iteration's raw values.
    final = {k: round(final_running_average(v), 4) for k, v in result.history.items() if v}
    report: dict[str, Any] = {
        "args": stored_args,
        "map_50": None if math.isnan(map_50) else map_50,
        "ap_per_class": dict(zip(class_names, ap, strict=True)),
        # pycocotools' 12 numbers (-1 where COCOeval gives -1), from the same predictions
        "coco": {k: float(v) for k, v in metrics["coco"].items() if v.dim() == 0},
        "iterations": result.iterations,
        "resumed_from": result.resumed_from,
        "final_losses": final,
        "final_losses_note": "running average r = 0.9 r + 0.1 loss, as the progress bar shows",
        "last_iteration_losses": {k: v[-1] for k, v in result.history.items() if v},
        "train_seconds": round(trained - started, 1),
        "eval_seconds": round(finished - trained, 1),
        "total_seconds": round(finished - started, 1),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "checkpoint": str(result.checkpoint_path),
        "loss_curve": str(result.loss_curve_path) if result.loss_curve_path else None,
        "val_grid": str(grid),
    }
    atomic_write_text(output / "metrics.json", json.dumps(report, indent=1) + "\n")
    written.complete.append(written.missing.pop(0))

    def fmt(value: float | None, digits: int) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    losses = ", ".join(f"{k.removeprefix('loss_')} {v:.4f}" for k, v in final.items())
    print(
        f"final losses (running average): {losses}\n"
        f"val mAP@0.5 = {fmt(report['map_50'], 4)}  ("
        + ", ".join(f"{n} {fmt(a, 3)}" for n, a in report["ap_per_class"].items())
        + f")\nval COCO mAP@[.5:.95] = {report['coco']['map']:.4f}  (mAP@.5 "
        f"{report['coco']['map_50']:.4f}, mAP@.75 {report['coco']['map_75']:.4f})"
        f"\ntrain {report['train_seconds']} s, eval {report['eval_seconds']} s; "
        f"wrote {checkpoint}, {report['loss_curve']}, {grid}, {output / 'metrics.json'}",
        flush=True,
    )
    return 0
