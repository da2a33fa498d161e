"""NumPy reference for detops.losses.

Written from the contracts in the detops.losses docstrings: float64, one element at a
time, NumPy only (never imports torch or detops). Logarithms are taken in log space
(``log p = -softplus(-x)``) so the reference itself is exact where p or 1 - p underflow,
e.g. at logits of +-1e4.
"""

from __future__ import annotations

import math

import numpy as np


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
