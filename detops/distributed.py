"""torch.distributed helpers for training and evaluating FCOS on several processes (DDP).

Nothing here starts or configures a process group: the application does that (``torchrun``
sets the environment, the program calls ``torch.distributed.init_process_group``). Every
helper works, and does nothing collective, when no process group is initialized.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ._checks import check_tensor

__all__ = [
    "gather_in_order",
    "global_positives_per_image",
    "is_distributed",
    "rank",
    "world_size",
]


def is_distributed() -> bool:
    """Whether a process group with more than one process is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_positives_per_image(matched_gt_boxes: Tensor) -> Tensor:
    """Positive locations per image over every rank's batch, for
    :func:`detops.fcos_loss`'s ``positives_per_image``.

    ``(sum over ranks of positives) / (sum over ranks of images)``, where a location is
    positive when its matched class ``matched_gt_boxes[..., 4]`` is not -1 (as in
    ``fcos_loss``). One ``all_reduce`` of a two-element float64 tensor, on the device of
    ``matched_gt_boxes``; no host synchronization. Without a process group it is this
    batch's own figure, so the same code runs in one process.

    Args:
        matched_gt_boxes (Tensor[B, L, 5]): the matched GT rows of this rank's batch.

    Returns:
        Tensor[] float64 on the device of ``matched_gt_boxes``.
    """
    op = "global_positives_per_image"
    check_tensor(op, "matched_gt_boxes", matched_gt_boxes)
    if matched_gt_boxes.dim() != 3 or matched_gt_boxes.shape[-1] != 5:
        shape = list(matched_gt_boxes.shape)
        raise ValueError(f"{op}: matched_gt_boxes must have shape [B, L, 5], got {shape}")
    positives = (matched_gt_boxes[..., 4].detach() != -1).sum().to(torch.float64)
    images = torch.tensor(
        float(matched_gt_boxes.shape[0]), dtype=torch.float64, device=matched_gt_boxes.device
    )
    counts = torch.stack((positives, images))
    if is_distributed():
        dist.all_reduce(counts)
    return counts[0] / counts[1]


def gather_in_order(items: Sequence[Any], indices: Sequence[int]) -> list[Any]:
    """Every rank's ``items`` in the order of their dataset ``indices``, on every rank.

    For evaluation on shards: each rank predicts the images its sampler gave it and passes
    the results with their dataset indices. ``DistributedSampler`` pads the shards to equal
    length by repeating indices; a repeated index is kept once. The result is what one
    process evaluating the whole dataset in order would have, so metrics computed from it
    equal the single-process figures exactly, as long as each image's predictions do not
    depend on the images batched with it (a convolution's rounding can: evaluate with
    batch size 1 for bit-exact figures). Tensors are moved to the CPU before the
    gather (``all_gather_object`` pickles them). Without a process group it sorts ``items``
    by ``indices``.
    """
    op = "gather_in_order"
    if len(items) != len(indices):
        raise ValueError(
            f"{op}: items and indices must have the same length, got {len(items)} and "
            f"{len(indices)}"
        )
    pairs = [(int(i), _to_cpu(item)) for i, item in zip(indices, items, strict=True)]
    if is_distributed():
        gathered: list[Any] = [None] * world_size()
        dist.all_gather_object(gathered, pairs)
        pairs = [pair for part in gathered for pair in part]
    ordered: dict[int, Any] = {}
    for index, item in sorted(pairs, key=lambda pair: pair[0]):
        ordered.setdefault(index, item)
    return list(ordered.values())


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value
