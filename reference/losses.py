"""NumPy reference for detops.losses.

Written from the contracts in the detops.losses docstrings: float64, one element at a
time, NumPy only (never imports torch or detops). Logarithms are taken in log space
(``log p = -softplus(-x)``) so the reference itself is exact where p or 1 - p underflow,
e.g. at logits of +-1e4.
"""

from __future__ import annotations

import math

import numpy as np

from .deltas import fcos_make_centerness_targets


def _softplus(z: float) -> float:
    """log(1 + exp(z)) without overflow."""
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _log_add(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) for a, b in [-inf, 0]."""
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def _log(v: float) -> float:
    return math.log(v) if v > 0 else -math.inf


def _element(x: float, t: float, alpha: float, gamma: float) -> tuple[float, float]:
    """Loss and d loss / dx of one element, from the definitions:

    p = sigmoid(x); ce = -(t log p + (1 - t) log(1 - p)); q = 1 - p_t = p (1 - t) + (1 - p) t;
    a_t = alpha t + (1 - alpha)(1 - t) (1 when alpha = -1); loss = a_t ce q**gamma;
    d loss / dx = a_t (q**gamma (p - t) + gamma ce q**(gamma - 1) p (1 - p) (1 - 2t)).
    """
    p = _sigmoid(x)
    log_p, log_pn = -_softplus(-x), -_softplus(x)
    ce = -(t * log_p + (1.0 - t) * log_pn)
    # log q, with q = p (1 - t) + (1 - p) t summed in log space (exact where p underflows).
    log_q = _log_add(_log(1.0 - t) + log_p, _log(t) + log_pn)
    weight = 1.0 if alpha == -1 else alpha * t + (1.0 - alpha) * (1.0 - t)
    q_gamma = 1.0 if gamma == 0 else math.exp(gamma * log_q)
    loss = weight * ce * q_gamma
    # q**(gamma-1) p (1 - p): its limit where q -> 0 is 0 for gamma > 0 (p (1 - p) <= q).
    if gamma == 0 or log_q == -math.inf:
        focal_term = 0.0
    else:
        focal_term = gamma * ce * (1.0 - 2.0 * t) * math.exp((gamma - 1.0) * log_q + log_p + log_pn)
    grad = weight * (q_gamma * (p - t) + focal_term)
    return loss, grad


def _reduce(values: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "none":
        return values
    if reduction == "sum":
        return np.asarray(values.sum())
    return np.asarray(values.mean() if values.size else 0.0)


def _elementwise(inputs, targets, alpha, gamma):
    x = np.asarray(inputs, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    loss = np.zeros(x.shape)
    grad = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        loss[idx], grad[idx] = _element(float(x[idx]), float(t[idx]), float(alpha), float(gamma))
    return loss, grad


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """``a_t * ce * (1 - p_t) ** gamma`` per element, then ``none``/``mean``/``sum``.

    The mean of an empty input is 0.
    """
    loss, _ = _elementwise(inputs, targets, alpha, gamma)
    return _reduce(loss, reduction)


def sigmoid_focal_loss_grad(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """The analytic gradient of the loss w.r.t. ``inputs``: of ``loss.sum()`` for ``none``
    and ``sum``, of the mean for ``mean`` (each element's derivative divided by N)."""
    _, grad = _elementwise(inputs, targets, alpha, gamma)
    if reduction == "mean" and grad.size:
        grad = grad / grad.size
    return grad


def _one_hot(class_ids, num_classes):
    ids = np.asarray(class_ids)
    targets = np.zeros(ids.shape + (num_classes,))
    for idx in np.ndindex(*ids.shape):
        c = int(ids[idx])
        if 0 <= c < num_classes:  # anything else is a background row
            targets[idx + (c,)] = 1.0
    return targets


def sigmoid_focal_loss_from_class_ids(inputs, class_ids, alpha=0.25, gamma=2.0, reduction="none"):
    """The focal loss against the one-hot of ``class_ids`` (ids outside [0, C): all zero)."""
    x = np.asarray(inputs, dtype=np.float64)
    return sigmoid_focal_loss(x, _one_hot(class_ids, x.shape[-1]), alpha, gamma, reduction)


def _bce_with_logits(x: float, c: float) -> float:
    """-(c log sigmoid(x) + (1 - c) log(1 - sigmoid(x)))."""
    return c * _softplus(-x) + (1.0 - c) * _softplus(x)


def fcos_loss(
    pred_cls_logits,
    pred_boxreg_deltas,
    pred_ctr_logits,
    matched_gt_boxes,
    matched_gt_deltas,
    normalizer,
    *,
    momentum=0.9,
):
    """The FCOS loss of the contract, one location at a time.

    Positive location: matched class != -1. new normalizer = momentum * normalizer +
    (1 - momentum) * positives / B. loss_cls: focal loss (0.25, 2) summed against the
    one-hot of the class (a class outside [0, C) gives an all-zero row); loss_box:
    0.25 |pred - gt| summed over the rows whose four gt deltas are all >= 0 (a row with a
    negative delta is background); loss_ctr: BCE with logits against the centerness of the
    gt deltas, summed where it is >= 0. Each divided by new * B (by 1 if that is 0).
    """
    cls = np.asarray(pred_cls_logits, dtype=np.float64)
    box = np.asarray(pred_boxreg_deltas, dtype=np.float64)
    ctr = np.asarray(pred_ctr_logits, dtype=np.float64)
    gt_boxes = np.asarray(matched_gt_boxes, dtype=np.float64)
    gt_deltas = np.asarray(matched_gt_deltas, dtype=np.float64)
    batch, num_loc, num_classes = cls.shape
    positives = sum(1 for b in range(batch) for i in range(num_loc) if gt_boxes[b, i, 4] != -1)
    new = momentum * float(normalizer) + (1.0 - momentum) * positives / batch
    denominator = new * batch if new * batch != 0 else 1.0
    targets = np.zeros(cls.shape)
    for b in range(batch):
        for i in range(num_loc):
            c = gt_boxes[b, i, 4]
            if c >= 0 and int(c) < num_classes:
                targets[b, i, int(c)] = 1.0
    loss_cls = float(sigmoid_focal_loss(cls, targets, 0.25, 2.0, "sum"))
    loss_box = 0.0
    loss_ctr = 0.0
    centerness = fcos_make_centerness_targets(gt_deltas)
    for b in range(batch):
        for i in range(num_loc):
            if all(gt_deltas[b, i, k] >= 0 for k in range(4)):  # any negative: background
                for k in range(4):
                    loss_box += 0.25 * abs(box[b, i, k] - gt_deltas[b, i, k])
            if centerness[b, i] >= 0:
                loss_ctr += _bce_with_logits(ctr[b, i, 0], centerness[b, i])
    losses = {
        "loss_cls": np.asarray(loss_cls / denominator),
        "loss_box": np.asarray(loss_box / denominator),
        "loss_ctr": np.asarray(loss_ctr / denominator),
    }
    return losses, np.asarray(new)
