"""Training and evaluation loops for detectors built from detops modules.

The recipe is the course seed's (SGD, momentum 0.9, weight decay 1e-4, MultiStepLR dropping
the rate 10x at 60% and 90% of the run), with what the seed lacks:

- :func:`seed_everything` seeds python, numpy, torch and CUDA (optionally deterministic cuDNN);
- checkpoints are written atomically (temporary file + ``os.replace``) and hold everything a
  run needs to continue *exactly* as if it had not stopped: model (with the loss normalizer
  buffer), optimizer, scheduler, iteration, loss history, the RNG states and the position in
  the data loader;
- a tqdm bar shows the running losses, and a loss-curve PNG is written at the end.

A model given to :func:`train_detector` is any ``nn.Module`` whose training-mode
``forward(images, gt_boxes)`` returns a dict of scalar losses (summed for the backward pass),
such as :class:`detops.nn.FCOS`.
"""

from __future__ import annotations

import io
import math
import os
import random
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._checks import check_int

__all__ = [
    "TrainResult",
    "capture_rng_state",
    "evaluate_detector",
    "load_checkpoint",
    "plot_loss_curve",
    "restore_rng_state",
    "save_checkpoint",
    "save_validation_grid",
    "seed_everything",
    "split_batch",
    "train_detector",
]

_CHECKPOINT_FORMAT = 1


# --------------------------------------------------------------------------------------------
# Seeding and RNG state


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed python's ``random``, NumPy's global RNG, torch (CPU) and every CUDA device.

    Args:
        seed (int): a non-negative seed.
        deterministic (bool): also make cuDNN pick deterministic kernels
            (``cudnn.deterministic = True``, ``cudnn.benchmark = False``). Slower on GPU; no
            effect on CPU runs, which are deterministic for a fixed thread count anyway.
    """
    seed = check_int("seed_everything", "seed", seed, minimum=0, expected="a non-negative int")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)  # lazy: a no-op without CUDA
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def capture_rng_state() -> dict[str, Any]:
    """The states of python's, NumPy's, torch's and CUDA's global RNGs.

    The result holds only tensors, ints, floats, strings, lists and tuples, so it is stored in
    a checkpoint that ``torch.load(weights_only=True)`` can read.
    """
    np_state = np.random.get_state(legacy=False)
    version, py_state, gauss = random.getstate()
    return {
        "python": (version, list(py_state), gauss),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the RNG states returned by :func:`capture_rng_state`."""
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _loader_generators(loader: Iterable) -> list[torch.Generator]:
    """The explicit generators a DataLoader draws its shuffling and worker seeds from."""
    found: list[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    inner = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    generator = getattr(inner, "generator", None)
    if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
        found.append(generator)
    return found


# --------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write ``state`` with ``torch.save``, atomically.

    The bytes go to a temporary file in the same directory, are flushed and fsynced, and the
    file is renamed over ``path`` with ``os.replace``: a reader (or a run killed mid-write)
    sees either the old checkpoint or the new one, never half of one. A Ctrl-C during the
    write raises ``KeyboardInterrupt`` (and leaves no temporary file).
    """
    from ._atomic import atomic_path

    with atomic_path(path) as temporary:
        # Given a path, torch's C++ writer writes the file itself. Given a Python file, it
        # calls its write() from C++, where a Ctrl-C became "RuntimeError: [enforce fail
        # ...] unexpected pos" and, on a second Ctrl-C, an abort (exit 134) when the broken
        # writer was destroyed.
        torch.save(dict(state), os.fspath(temporary))
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
    return Path(path)


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`train_detector` (``torch.load(weights_only=True)``)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(
            f"load_checkpoint: {os.fspath(path)!r} must hold a dict with a 'model' state_dict, "
            f"got {type(state).__name__}"
        )
    return state


# --------------------------------------------------------------------------------------------
# Batches


def split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """``(images [B, 3, H, W], gt_boxes [B, N, 5])`` from a detection batch.

    Accepts the course dataset's ``(paths, images, gt_boxes)`` tuples, ``(images, gt_boxes)``
    pairs and dicts with ``"image"``/``"images"`` and ``"gt_boxes"`` keys.
    """
    if isinstance(batch, Mapping):
        images = batch.get("images", batch.get("image"))
        boxes = batch.get("gt_boxes")
    elif isinstance(batch, Sequence) and len(batch) in (2, 3):
        images, boxes = batch[-2], batch[-1]
    else:
        images = boxes = None
    if not isinstance(images, Tensor) or not isinstance(boxes, Tensor):
        raise TypeError(
            "split_batch: a batch must be (images, gt_boxes), (paths, images, gt_boxes) or a "
            f"dict with 'images' and 'gt_boxes' tensors, got {type(batch).__name__}"
        )
    return images, boxes


# --------------------------------------------------------------------------------------------
# Loss curve


def _running_average(values: np.ndarray, momentum: float = 0.9) -> np.ndarray:
    """``r_0 = x_0``, ``r_i = momentum r_{i-1} + (1 - momentum) x_i``: the progress bar's."""
    out = np.empty_like(values)
    running = values[0]
    for i, value in enumerate(values):
        running = value if i == 0 else momentum * running + (1 - momentum) * value
        out[i] = running
    return out


def final_running_average(values: Sequence[float], momentum: float = 0.9) -> float:
    """The last value of :func:`_running_average` of ``values`` (non-empty): the number the
    progress bar shows for a loss when training ends."""
    return float(_running_average(np.asarray(values, dtype=np.float64), momentum)[-1])


def lr_steps(lr_history: Sequence[float], after: int) -> list[tuple[int, float]]:
    """``(iteration, factor)`` where the rate drops (not the warm-up's rises): iteration
    ``i`` (1-based) is the first that used the new rate."""
    steps = []
    for i in range(max(1, after), len(lr_history)):
        before, now = lr_history[i - 1], lr_history[i]
        if before > 0 and now < before * (1 - 1e-6):
            steps.append((i + 1, now / before))
    return steps


def plot_loss_curve(
    history: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    lr_history: Sequence[float] | None = None,
    warmup_iterations: int = 0,
    note: str | None = None,
) -> Path:
    """Plot per-iteration losses to a PNG (written atomically); returns the path.

    Each loss is drawn raw (thin, faint) and as the running average the progress bar shows
    (``r = 0.9 r + 0.1 loss``, solid; its last value is the one printed), on a log scale.
    With ``lr_history`` a lower panel shows the learning rate, and both panels mark the end
    of the ``warmup_iterations`` (dashed) and each drop of the rate (dotted, ``lr x0.1``).
    ``note`` is printed above the upper panel (e.g. why the loss rises at first).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ._atomic import atomic_write_bytes

    figure = Figure(figsize=(8, 5.2 if lr_history else 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    if lr_history:
        axes, lr_axes = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    else:
        axes, lr_axes = figure.add_subplot(1, 1, 1), None
    for index, (name, values) in enumerate(history.items()):
        series = np.asarray(values, dtype=np.float64)
        if series.size == 0:
            continue
        steps = np.arange(1, series.size + 1)
        color = f"C{index}"
        smooth = _running_average(series)
        axes.plot(steps, series, color=color, alpha=0.25, linewidth=0.7)
        axes.plot(
            steps, smooth, color=color, linewidth=1.6, label=f"{name} (last {smooth[-1]:.3f})"
        )
    axes.set_yscale("log")
    axes.set_ylabel("loss (raw faint, running avg solid)")
    axes.grid(True, which="both", alpha=0.3)
    panels = [a for a in (axes, lr_axes) if a is not None]
    marked_warmup = bool(warmup_iterations) and (
        not lr_history or warmup_iterations < len(lr_history)
    )
    steps_marked = lr_steps(lr_history, warmup_iterations) if lr_history else []
    for panel in panels:
        if marked_warmup:
            panel.axvspan(0, warmup_iterations, color="0.85", alpha=0.5, linewidth=0)
            panel.axvline(warmup_iterations, color="0.35", linestyle="--", linewidth=1)
        for iteration, _ in steps_marked:
            panel.axvline(iteration, color="0.35", linestyle=":", linewidth=1.2)
    # The marks' words: on the lr panel when there is one (the loss legend sits top right).
    marked = lr_axes if lr_axes is not None else axes
    transform = marked.get_xaxis_transform()
    if marked_warmup:
        marked.text(
            warmup_iterations, 0.95, " warm-up ends", transform=transform,
            fontsize=8, va="top", ha="left", color="0.25",
        )  # fmt: skip
    for iteration, factor in steps_marked:
        marked.text(
            iteration, 0.95, f" lr x{factor:.2g}", transform=transform,
            fontsize=8, va="top", ha="left", color="0.25",
        )  # fmt: skip
    if any(len(v) for v in history.values()):
        axes.legend(loc="upper right", fontsize=8)
    if lr_axes is not None and lr_history:
        lr_axes.plot(np.arange(1, len(lr_history) + 1), lr_history, color="k", linewidth=1.2)
        lr_axes.set_ylabel("lr")
        lr_axes.set_xlabel("iteration")
        lr_axes.grid(True, alpha=0.3)
        lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    else:
        axes.set_xlabel("iteration")
    if title:
        figure.suptitle(title)
    if note:
        axes.set_title(textwrap.fill(note, 115), fontsize=7.5, loc="left", color="0.3")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


@torch.no_grad()
def save_validation_grid(
    model: nn.Module,
    dataset: Sequence,
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    count: int = 8,
    columns: int = 4,
    score_thresh: float | None = 0.3,
    nms_thresh: float | None = None,
    device: str | torch.device | None = None,
) -> Path:
    """Run an eval-mode detector on the first ``count`` items of ``dataset`` (the course
    dataset's ``(path, image, gt_boxes)`` items, normalized images) and write one PNG page
    of them: predictions and GT drawn by :func:`detops.visualize.draw_detections`,
    ``columns`` per row. The model's training mode is restored. Returns the path."""
    from .visualize import detection_grid, draw_detections, save_png, unnormalize_image

    device = torch.device(device) if device is not None else _module_device(model)
    items = [split_batch(dataset[i]) for i in range(min(count, len(dataset)))]
    if not items:
        raise ValueError("save_validation_grid: dataset is empty")
    images = torch.stack([image for image, _ in items])
    was_training = model.training
    model.eval()
    try:
        outputs = model(
            images.to(device), test_score_thresh=score_thresh, test_nms_thresh=nms_thresh
        )
    finally:
        model.train(was_training)
    if hasattr(outputs, "as_dicts"):
        outputs = outputs.as_dicts()
    panels = []
    for (image, gt_boxes), found in zip(items, outputs, strict=True):
        panels.append(
            draw_detections(
                unnormalize_image(image),
                boxes=found["boxes"].cpu(),
                labels=found["labels"].cpu(),
                scores=found["scores"].cpu(),
                gt_boxes=gt_boxes,
                class_names=class_names,
                legend=True,
            )
        )
    return save_png(detection_grid(panels, columns=columns), path)


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    """What :func:`train_detector` did.

    Attributes:
        iterations: iterations completed in total (including those before a resume).
        history: per-iteration values of every loss and of ``"total"``.
        lr_history: the learning rate each iteration's step used.
        resumed_from: the iteration the run resumed from (0 for a fresh run).
        seconds: wall time of this call.
        checkpoint_path / loss_curve_path: where they were written (None if not).
    """

    iterations: int
    history: dict[str, list[float]] = field(default_factory=dict)
    lr_history: list[float] = field(default_factory=list)
    resumed_from: int = 0
    seconds: float = 0.0
    checkpoint_path: Path | None = None
    loss_curve_path: Path | None = None


def _set_sampler_epoch(loader: Iterable, epoch: int) -> None:
    """A ``DistributedSampler`` shuffles by seed and epoch: tell it the epoch."""
    set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
    if set_epoch is not None:
        set_epoch(epoch)


class _BatchStream:
    """Endless batches from ``loader``, epoch after epoch, with a resumable position.

    At the start of each epoch it records the RNG states the loader draws its shuffle and
    worker seeds from; replaying those states and skipping the batches already used puts a
    new iterator exactly where the old one was.
    """

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self.epoch = 0
        self.batches_into_epoch = 0
        self.epoch_rng: dict[str, Any] | None = None
        self._iterator: Iterator | None = None

    def _start_epoch(self) -> Iterator:
        _set_sampler_epoch(self.loader, self.epoch)
        self.epoch_rng = {
            "global": capture_rng_state(),
            "loader": [g.get_state() for g in _loader_generators(self.loader)],
        }
        self._iterator = iter(self.loader)
        self.batches_into_epoch = 0
        return self._iterator

    def next(self) -> Any:
        iterator = self._start_epoch() if self._iterator is None else self._iterator
        try:
            batch = next(iterator)
        except StopIteration:
            if self.batches_into_epoch == 0:
                raise ValueError("train_detector: loader yielded no batches") from None
            self.epoch += 1
            batch = next(self._start_epoch())
        self.batches_into_epoch += 1
        return batch

    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batches_into_epoch": self.batches_into_epoch,
            "epoch_rng": self.epoch_rng,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Re-create the iterator of the checkpoint's epoch and skip its used batches.

        The skipped batches are loaded and dropped (a DataLoader cannot seek); the caller
        restores the global RNG states afterwards.
        """
        self.epoch = int(state["epoch"])
        if state["epoch_rng"] is None:
            return
        restore_rng_state(state["epoch_rng"]["global"])
        generators = _loader_generators(self.loader)
        for generator, saved in zip(generators, state["epoch_rng"]["loader"], strict=False):
            generator.set_state(saved)
        self.epoch_rng = state["epoch_rng"]
        _set_sampler_epoch(self.loader, self.epoch)
        self._iterator = iterator = iter(self.loader)
        self.batches_into_epoch = 0
        for _ in range(int(state["batches_into_epoch"])):
            next(iterator)
            self.batches_into_epoch += 1


def _loss_values(losses: Mapping[str, Tensor], total: Tensor, world: int) -> dict[str, float]:
    """The float losses and ``"total"``; under torch.distributed their mean over the ranks
    (one all_reduce), so every rank logs, checks and records the same figures."""
    stacked = torch.stack([loss.detach() for loss in losses.values()] + [total.detach()])
    if world > 1:
        import torch.distributed as dist

        stacked = stacked.to(torch.float64)
        dist.all_reduce(stacked)
        stacked /= world
    return dict(zip([*losses, "total"], stacked.tolist(), strict=True))


def _make_scheduler(
    optimizer: torch.optim.Optimizer,
    iterations: int,
    milestones: Sequence[float],
    gamma: float,
    warmup_iterations: int,
    warmup_factor: float,
) -> torch.optim.lr_scheduler.LRScheduler:
    steps = sorted({max(1, int(round(m * iterations))) for m in milestones})
    main = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=steps, gamma=gamma)
    if warmup_iterations <= 0:
        return main
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=warmup_factor, end_factor=1.0, total_iters=warmup_iterations
    )
    return torch.optim.lr_scheduler.ChainedScheduler([warmup, main], optimizer=optimizer)


def _module_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def train_detector(
    model: nn.Module,
    loader: Iterable,
    *,
    iterations: int,
    lr: float = 5e-3,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    milestones: Sequence[float] = (0.6, 0.9),
    lr_gamma: float = 0.1,
    warmup_iterations: int = 0,
    warmup_factor: float = 1e-3,
    clip_grad_norm: float | None = None,
    device: str | torch.device | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 100,
    resume: bool = True,
    loss_curve_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
    extra_state: Mapping[str, Any] | None = None,
    on_iteration: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` for ``iterations`` SGD steps on batches drawn endlessly from ``loader``.

    Each step: ``losses = model(images, gt_boxes)`` (a dict of scalars), backward on their
    sum, optional gradient-norm clipping, ``optimizer.step()``, ``scheduler.step()``.
    Optimizer: SGD (``lr``, ``momentum``, ``weight_decay``) over parameters that require
    grad. Schedule: optional linear warmup from ``warmup_factor * lr`` over
    ``warmup_iterations`` steps, times a MultiStepLR that multiplies the rate by ``lr_gamma``
    after ``milestones`` (fractions of ``iterations``; the course code's 60% and 90%).

    Checkpoints (when ``checkpoint_path`` is given) are written atomically every
    ``checkpoint_every`` iterations, at the end, and when the run is interrupted by
    ``KeyboardInterrupt``. With ``resume=True`` an existing checkpoint at that path is loaded
    first and training continues from its iteration: the model, the optimizer's momentum,
    the scheduler, the loss history, the loader's position within its epoch (shuffle order
    included) and the RNG states all come back, so the remaining iterations produce the
    same losses as an uninterrupted run (given the same loader, seed and thread count).

    Args:
        model: training-mode ``forward(images, gt_boxes) -> dict[str, Tensor]``.
        loader: an iterable of batches (see :func:`split_batch`), re-iterated per epoch.
        iterations: total number of optimizer steps of the run (> 0).
        lr, momentum, weight_decay: SGD settings.
        milestones: fractions of ``iterations`` where the rate drops by ``lr_gamma``.
        warmup_iterations, warmup_factor: linear warmup (0 disables it).
        clip_grad_norm: clip the global gradient norm to this value (None: no clipping).
        device: where to train; default the model's device. The model is moved there.
        checkpoint_path, checkpoint_every, resume: see above.
        loss_curve_path: write a PNG of the loss history there at the end.
        progress: show a tqdm bar with the running (EMA) losses.
        extra_state: stored as ``checkpoint["extra"]`` (e.g. the model's constructor
            arguments and class names, for ``python -m detops detect``).
        on_iteration: called as ``on_iteration(iteration, losses)`` after each step, with
            the 1-based iteration and the float losses (including ``"total"``).

    Returns:
        TrainResult.

    Raises:
        FloatingPointError: a loss became NaN or infinite (the message names the iteration).
        ValueError: bad arguments, or a checkpoint from a run with a different ``iterations``.
    """
    check_int("train_detector", "iterations", iterations, minimum=1, expected="a positive int")
    if not lr > 0:
        raise ValueError(f"train_detector: lr must be > 0, got {lr!r}")
    if checkpoint_every <= 0:
        raise ValueError(f"train_detector: checkpoint_every must be > 0, got {checkpoint_every}")
    if clip_grad_norm is not None and not clip_grad_norm > 0:
        raise ValueError(f"train_detector: clip_grad_norm must be > 0, got {clip_grad_norm!r}")
    from tqdm.auto import tqdm

    from .distributed import is_distributed, rank, world_size

    started = time.perf_counter()
    device = torch.device(device) if device is not None else _module_device(model)
    model.to(device)
    distributed = is_distributed()
    main_process = rank() == 0
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = _make_scheduler(
        optimizer, iterations, milestones, lr_gamma, warmup_iterations, warmup_factor
    )
    stream = _BatchStream(loader)
    history: dict[str, list[float]] = {}
    lr_history: list[float] = []
    start = 0
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None

    if resume and checkpoint_path is not None and checkpoint_path.exists():
        # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest.
        state = load_checkpoint(checkpoint_path, map_location="cpu")
        if state.get("total_iterations") != iterations:
            raise ValueError(
                f"train_detector: checkpoint {str(checkpoint_path)!r} belongs to a run of "
                f"{state.get('total_iterations')} iterations, got iterations={iterations}; "
                "pass the same iterations to resume, or resume=False to start over"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = {k: list(v) for k, v in state["history"].items()}
        lr_history = list(state["lr_history"])
        start = int(state["iteration"])
        stream.restore(state["loader"])
        restore_rng_state(state["rng"])

    # Under torch.distributed: DistributedDataParallel (it broadcasts rank 0's weights), and
    # only rank 0 writes files and shows progress. Every rank loads a resumed checkpoint.
    net = model
    if distributed and not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        ids = [device.index or 0] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def write_checkpoint(iteration: int) -> None:
        if checkpoint_path is None or not main_process:
            return
        save_checkpoint(
            checkpoint_path,
            {
                "format": _CHECKPOINT_FORMAT,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "iteration": iteration,
                "total_iterations": iterations,
                "history": history,
                "lr_history": lr_history,
                "loader": stream.state(),
                "rng": capture_rng_state(),
                "extra": dict(extra_state or {}),
            },
        )

    model.train()
    running: dict[str, float] = {}
    bar = tqdm(
        total=iterations,
        initial=start,
        disable=not (progress and main_process),
        dynamic_ncols=True,
        desc="train",
    )
    iteration = start
    stepping = False  # True from the optimizer step until its iteration is fully recorded
    try:
        while iteration < iterations:
            images, gt_boxes = split_batch(stream.next())
            images = images.to(device, non_blocking=True)
            gt_boxes = gt_boxes.to(device, non_blocking=True)
            losses = net(images, gt_boxes)
            total = sum(losses.values())
            values = _loss_values(losses, total, world_size() if distributed else 1)
            if not all(math.isfinite(v) for v in values.values()):  # before it reaches weights
                raise FloatingPointError(
                    f"train_detector: non-finite loss at iteration {iteration + 1}: {values}. "
                    "Try a lower lr, a longer warmup or clip_grad_norm."
                )
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
            stepping = True
            lr_history.append(float(optimizer.param_groups[0]["lr"]))
            optimizer.step()
            scheduler.step()
            iteration += 1
            for name, value in values.items():
                history.setdefault(name, []).append(value)
                running[name] = value if name not in running else 0.9 * running[name] + 0.1 * value
            bar.set_postfix(
                {k.removeprefix("loss_"): f"{v:.3f}" for k, v in running.items()}
                | {"lr": f"{optimizer.param_groups[0]['lr']:.2g}"},
                refresh=False,
            )
            bar.update(1)
            stepping = False
            if on_iteration is not None:
                on_iteration(iteration, values)
            if iteration % checkpoint_every == 0 and iteration < iterations:
                write_checkpoint(iteration)
    except KeyboardInterrupt:
        # Save only a consistent state: an interrupt between the optimizer step and the
        # end of its bookkeeping leaves the last periodic checkpoint as the resume point.
        if iteration > start and not stepping:
            write_checkpoint(iteration)
        raise
    finally:
        bar.close()
    if iteration > start or (checkpoint_path is not None and not checkpoint_path.exists()):
        write_checkpoint(iteration)

    curve = None
    if loss_curve_path is not None and main_process:
        note = None
        if hasattr(model, "loss_normalizer"):
            note = (
                "FCOS divides its losses by a running average of positive locations per "
                "image that starts at 150 and settles within about 40 iterations (momentum "
                "0.9): the rise over those first iterations is that settling, not divergence."
            )
        curve = plot_loss_curve(
            history,
            loss_curve_path,
            title=f"{iterations} iterations",
            lr_history=lr_history,
            warmup_iterations=warmup_iterations,
            note=note,
        )
    return TrainResult(
        iterations=iteration,
        history=history,
        lr_history=lr_history,
        resumed_from=start,
        seconds=time.perf_counter() - started,
        checkpoint_path=checkpoint_path,
        loss_curve_path=curve,
    )


# --------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def predict_detections(
    model: nn.Module,
    loader: Iterable,
    *,
    score_thresh: float | None = None,
    nms_thresh: float | None = None,
    device: str | torch.device | None = None,
) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
    """Run an eval-mode detector over ``loader``; return per-image detections and GT dicts.

    The model's eval-mode ``forward(images, test_score_thresh=..., test_nms_thresh=...)``
    must return either an object with ``.as_dicts()`` (:class:`detops.nn.FCOS` returns
    :class:`~detops.inference.FCOSDetections`) or one dict per image with ``boxes``,
    ``labels`` and ``scores``. Both lists are on the CPU.
    """
    from .metrics import gt_dicts_from_padded

    device = torch.device(device) if device is not None else _module_device(model)
    was_training = model.training
    model.eval()
    detections: list[dict[str, Tensor]] = []
    ground_truths: list[dict[str, Tensor]] = []
    try:
        for batch in loader:
            images, gt_boxes = split_batch(batch)
            outputs = model(
                images.to(device), test_score_thresh=score_thresh, test_nms_thresh=nms_thresh
            )
            if hasattr(outputs, "as_dicts"):
                outputs = outputs.as_dicts()
            detections += [{k: v.cpu() for k, v in out.items()} for out in outputs]
            ground_truths += gt_dicts_from_padded(gt_boxes.cpu())
    finally:
        model.train(was_training)
    return detections, ground_truths


def evaluate_detector(
    model: nn.Module,
    loader: Iterable,
    num_classes: int,
    *,
    score_thresh: float | None = None,
    nms_thresh: float | None = None,
    iou_threshold: float = 0.5,
    device: str | torch.device | None = None,
    coco: bool = False,
) -> dict[str, Any]:
    """mAP of an eval-mode detector over ``loader``.

    With ``coco=True`` the result also holds ``"coco"``: the COCO protocol's dict
    (``map``, ``map_50``, ...; see ``protocol="coco"``) from the same predictions.

    See :func:`detops.metrics.mean_average_precision`. Under torch.distributed with a
    ``DistributedSampler`` (``shuffle=False``) in ``loader``, each rank predicts its shard
    and the predictions are gathered in dataset order (:func:`detops.distributed.
    gather_in_order`), so every rank returns the single-process figures.

    Returns the metric's dict (``map``, ``ap_per_class``, ``map_per_threshold``).
    """
    from torch.utils.data import DistributedSampler

    from .distributed import gather_in_order, is_distributed
    from .metrics import mean_average_precision

    detections, ground_truths = predict_detections(
        model, loader, score_thresh=score_thresh, nms_thresh=nms_thresh, device=device
    )
    sampler = getattr(loader, "sampler", None)
    if is_distributed() and isinstance(sampler, DistributedSampler):
        indices = list(sampler)
        detections = gather_in_order(detections, indices)
        ground_truths = gather_in_order(ground_truths, indices)
    metrics: dict[str, Any] = mean_average_precision(
        detections, ground_truths, num_classes, iou_threshold
    )
    if coco:
        metrics["coco"] = mean_average_precision(
            detections, ground_truths, num_classes, protocol="coco"
        )
    return metrics
