"""Robustness: a column instead of a vector (shape [L, 1] instead of [L])."""

from correct import fcos_make_centerness_targets as _centerness


def fcos_make_centerness_targets(deltas):
    return _centerness(deltas)[:, None]
