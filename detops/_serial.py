"""Index helpers that open no CPU parallel region, for ops made of many small tensor ops.

``torch.repeat_interleave``, ``torch.searchsorted`` and ``torch.take`` split even a few
hundred elements across torch's intra-op threads (their parallel grain is 1 to 200
elements). On a machine where another process competes for the cores, each such region
can wait milliseconds for a thread to be scheduled (measured on 2 cores with one busy
process: ``searchsorted`` on 4.7k elements 0.10 -> 2.1 ms, ``repeat_interleave`` 12 µs ->
0.65 ms). detops never changes torch's thread settings, so its small ops stay fast by
using kernels that run serially below ATen's 32768-element grain: sort, cumsum, bincount,
``index_add_`` and ``index_select``. On CUDA the native ops are used.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["owner_index", "repeat_interleave", "searchsorted", "take"]


def owner_index(counts: Tensor, total: int | None = None) -> Tensor:
    """``repeat_interleave(arange(len(counts)), counts)``: the group of every position.

    Marks where each group starts (empty groups stack up at the same place) and a
    cumulative sum numbers the positions by the last group started. ``total`` is
    ``counts.sum()`` when the caller knows it; otherwise it is read back (one sync).
    """
    if counts.device.type == "cuda":
        groups = torch.arange(counts.numel(), device=counts.device)
        return groups.repeat_interleave(counts, output_size=total)
    ends = torch.cumsum(counts, 0)
    if total is None:
        total = int(ends[-1]) if counts.numel() else 0
    starts = (ends - counts).clamp(max=total)
    marks = torch.zeros(total + 1, dtype=torch.int64, device=counts.device)
    marks.index_add_(0, starts, torch.ones_like(starts, dtype=torch.int64))
    return torch.cumsum(marks[:total], 0) - 1


def repeat_interleave(values: Tensor, counts: Tensor, total: int | None = None) -> Tensor:
    """``values.repeat_interleave(counts, output_size=total)`` for 1-D ``values``."""
    return values.index_select(0, owner_index(counts, total))


def searchsorted(sorted_sequence: Tensor, values: Tensor, *, right: bool = False) -> Tensor:
    """``torch.searchsorted(sorted_sequence, values, right=right)`` along the last dim.

    For each value, the number of sequence elements ``< value`` (``<= value`` with
    ``right``), found by one stable sort of both together: on ties the sequence elements
    go first with ``right`` and last without, so the count of sequence elements in front
    of a value is the answer. Leading dims are batch dims, as in torch.searchsorted.
    """
    if sorted_sequence.device.type == "cuda":
        return torch.searchsorted(sorted_sequence, values, right=right)
    dtype = torch.promote_types(sorted_sequence.dtype, values.dtype)
    n, m = sorted_sequence.shape[-1], values.shape[-1]
    sequence, values = sorted_sequence.to(dtype), values.to(dtype)
    parts = (sequence, values) if right else (values, sequence)
    order = torch.sort(torch.cat(parts, -1), dim=-1, stable=True).indices
    from_sequence = order < n if right else order >= m
    sequence_before = torch.cumsum(from_sequence, -1) - from_sequence.to(torch.int64)
    position = torch.empty_like(order)
    position.scatter_(-1, order, torch.arange(n + m, device=order.device).expand_as(order))
    value_position = position[..., n:] if right else position[..., :m]
    return sequence_before.gather(-1, value_position)


def take(source: Tensor, index: Tensor) -> Tensor:
    """``torch.take(source, index)``: elements of the flattened ``source``, shaped as
    ``index``."""
    return source.reshape(-1).index_select(0, index.reshape(-1)).view(index.shape)
