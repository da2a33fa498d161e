"""Sigmoid focal loss (fused, chunked, numerically stable) and the FCOS training loss.

Notation used in every docstring of this module, for a logit ``x`` and a target ``t`` in
[0, 1]::

    p      = sigmoid(x)
    ce     = -(t * log(p) + (1 - t) * log(1 - p))        # BCE with logits
    1-p_t  = p * (1 - t) + (1 - p) * t                     # "q" below
    a_t    = alpha * t + (1 - alpha) * (1 - t)             # 1 when alpha == -1
    loss   = a_t * ce * (1 - p_t) ** gamma

and its derivative, in closed form (``a_t`` does not depend on ``x``)::

    d loss / dx = a_t * q**gamma * ((p - t) + gamma * ce * r * (1 - 2 t)),   r = p (1 - p) / q

``r`` lies in [0, 1] because ``q >= min(p, 1 - p)``; writing the derivative through ``r``
instead of ``q ** (gamma - 1)`` keeps it finite for ``0 < gamma < 1`` at saturated logits,
where torchvision's autograd gradient is NaN.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._checks import (
    check_floating,
    check_integer_dtype,
    check_number,
    check_same_device,
    check_shape,
    check_tensor,
    check_unit_interval,
    is_finite,
    shape_str,
)
from ._memory import populate_pages
from ._serial import (
    SERIAL_ELEMENTS,
    numpy_view,
    plain_eager_mode,
    scale_in_place,
    under_function_transform,
    zeros,
)
from .deltas import fcos_make_centerness_targets

__all__ = [
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_grad",
    "sigmoid_focal_loss_from_class_ids",
    "fcos_loss",
]

# Elements per chunk on CPU: under ATen's parallel grain, so every op on a chunk runs
# serially in the calling thread (see detops._serial), and the float32 buffers
# (8 x 128 KiB) stay in L2. No torch exp/log/sqrt (VML grain 2048) or BLAS call is
# made on a chunk: softplus's exp and log1p run in NumPy where it vectorizes them, else
# as torch's softplus (a serial loop); neither forks. On CUDA a chunk is 2**21 elements.
_CHUNK = SERIAL_ELEMENTS

_REDUCTIONS = ("none", "mean", "sum")
# fcos_loss's box and centerness terms on CPU gather the counted rows, and the class-id
# focal loss computes only the positive entries (tests switch these off to run the dense,
# sync-free paths that other devices take).
_FOREGROUND_ROWS_ON_CPU = True
_SPARSE_POSITIVES_ON_CPU = True


def _check_alpha_gamma(op: str, alpha: object, gamma: object) -> tuple[float, float]:
    # (as torchvision takes them: NumPy scalars and one-element tensors too)
    alpha = check_number(
        op, "alpha", alpha, expected="a number", numpy_scalars=True, tensor_scalars=True
    )
    gamma = check_number(
        op, "gamma", gamma, expected="a number", numpy_scalars=True, tensor_scalars=True
    )
    if not (0.0 <= alpha <= 1.0) and alpha != -1.0:
        raise ValueError(f"{op}: alpha must lie in [0, 1] or be -1 (no weighting), got {alpha}")
    if not (gamma >= 0.0 and is_finite(gamma)):
        raise ValueError(f"{op}: gamma must be a finite number >= 0, got {gamma}")
    return alpha, gamma


def _check_reduction(op: str, reduction: object) -> str:
    if isinstance(reduction, str) and reduction in _REDUCTIONS:
        return reduction
    got = repr(reduction) if isinstance(reduction, str) else type(reduction).__name__
    raise ValueError(f"{op}: reduction must be one of 'none', 'mean', 'sum', got {got}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16 and bfloat16 are computed in float32; float32 and float64 in themselves."""
    return torch.float64 if dtype == torch.float64 else torch.float32


_BUFFER_NAMES = ("e", "l", "n", "p", "q", "w", "x", "t")


def _first_derivatives_only(backward: Callable[..., Any]) -> Callable[..., Any]:
    """An autograd Function's ``backward`` that refuses ``create_graph=True`` (grad mode is
    on inside a backward exactly then) with a RuntimeError naming ``ctx.op``. Its closed-form
    gradient carries no graph, and ``once_differentiable`` only fails where the incoming
    gradient requires grad: a focal loss added to another loss got a Hessian without its
    own term, silently."""

    @functools.wraps(backward)
    def checked(ctx: Any, *grad_outputs: Tensor) -> Any:
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"{ctx.op}: its backward gives first derivatives only; a backward with "
                "create_graph=True (for a second derivative) is not supported"
            )
        return backward(ctx, *grad_outputs)

    return checked


class _Buffers:
    """Chunk-sized scratch tensors, reused by every chunk of one call."""

    # One chunk-sized tensor per name of _BUFFER_NAMES (set by __init__ and cut()).
    e: Tensor
    l: Tensor
    n: Tensor
    p: Tensor
    q: Tensor
    w: Tensor
    x: Tensor
    t: Tensor
    gamma: Tensor
    neg_weight: Tensor
    neg_weight_value: float
    alpha_slope: float
    one: Tensor
    zero: Tensor

    def __init__(
        self, size: int, dtype: torch.dtype, device: torch.device, alpha: float, gamma: float
    ) -> None:
        for name in _BUFFER_NAMES:
            setattr(self, name, torch.empty(size, dtype=dtype, device=device))
        # 0-d constants: a Python scalar argument costs a hidden conversion per call, and a
        # tensor exponent keeps pow on the serial kernel (a float 0.5 becomes VML sqrt).
        # They stay on the CPU: CUDA ops take CPU 0-d tensors as scalars (no copy, no sync);
        # meta tensors, which hold no values, take none from the CPU.
        scalars = device if device.type == "meta" else None
        self.gamma = torch.tensor(gamma, dtype=dtype, device=scalars)
        self.neg_weight_value = 1.0 - alpha if alpha >= 0 else 1.0
        self.neg_weight = torch.tensor(self.neg_weight_value, dtype=dtype, device=scalars)
        self.alpha_slope = 2.0 * alpha - 1.0
        # On the buffers' device: addcmul, a ternary op, takes no CPU 0-d operand on CUDA.
        self.one = torch.ones((), dtype=dtype, device=device)
        self.zero = torch.zeros((), dtype=dtype, device=device)

    def cut(self, m: int) -> _Buffers:
        """Views of the first ``m`` elements (the last, shorter chunk)."""
        short = object.__new__(_Buffers)
        for name in _BUFFER_NAMES:
            setattr(short, name, getattr(self, name)[:m])
        for name in ("gamma", "neg_weight", "neg_weight_value", "alpha_slope", "one", "zero"):
            setattr(short, name, getattr(self, name))
        return short


def _softplus_threshold(dtype: torch.dtype) -> float:
    """Above it softplus returns x; exp(-threshold) / threshold is below the dtype's eps."""
    return 40.0 if dtype == torch.float64 else 20.0


_NUMPY_SOFTPLUS_MIN = 4096  # values from which _softplus_into may run in NumPy on CPU


def _numpy_has_fast_log1p() -> bool:
    """Whether this NumPy runs log1p vectorized: its x86 builds dispatch exp and log1p to
    SVML on CPUs with the AVX-512 "SKX" set, and elsewhere call the C library's scalar
    log1p. Measured on 32768 float32 values, exp then log1p: Intel Xeon (AVX-512) 31 µs
    in NumPy against 55 µs for torch's softplus; AMD EPYC (AVX2) 296-403 µs in NumPy
    against 116-134 µs for torch's softplus (the dense COCO focal forward+backward:
    683 against 321 ms). Read once, from NumPy's own table of the features it found
    (a private attribute; where a NumPy lacks it, torch's softplus is used)."""
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            features = __import__(module, fromlist=["__cpu_features__"]).__cpu_features__
        except (ImportError, AttributeError):
            continue
        return bool(features.get("AVX512_SKX", False))
    return False


_NUMPY_SOFTPLUS = _numpy_has_fast_log1p()


def _softplus_into(z: Tensor, out: Tensor, threshold: float | None) -> None:
    """``out = softplus(z)`` as torch computes it: ``z`` above ``threshold``, else
    ``log1p(exp(z))`` (None: every ``z`` is at most 0). On CPU, where NumPy's exp and
    log1p are vectorized (:func:`_numpy_has_fast_log1p`), in NumPy: they never fork, where
    torch's own exp and log1p fork above 2048 elements, and torch's softplus is a scalar
    loop. Each function is within an ulp or two of torch's. Small inputs stay with torch:
    the NumPy route's fixed cost (about 5 us) outweighs its gain below a few thousand
    values."""
    if not (_NUMPY_SOFTPLUS and z.is_cpu and out.is_cpu) or z.numel() < _NUMPY_SOFTPLUS_MIN:
        torch.ops.aten.softplus.out(z, 1, 20 if threshold is None else threshold, out=out)
        return
    _numpy_softplus_into(z, out, threshold)


def _numpy_softplus_into(z: Tensor, out: Tensor, threshold: float | None) -> None:
    """:func:`_softplus_into` in NumPy (CPU tensors)."""
    values, result = numpy_view(z), out.numpy()
    with np.errstate(over="ignore"):  # exp overflows above ~88 (float32): those take z
        np.exp(values, out=result)
    np.log1p(result, out=result)
    if threshold is not None:
        np.copyto(result, values, where=values > threshold)


def _pow_into(src: Tensor, out: Tensor, gamma: float, gamma_t: Tensor) -> None:
    """``out = src ** gamma`` (``0 ** 0 == 1`` as in torch.pow)."""
    if gamma == 2.0:
        torch.mul(src, src, out=out)
    elif gamma == 1.0:
        out.copy_(src)
    elif gamma == 0.0:
        out.fill_(1.0)
    else:
        torch.pow(src, gamma_t, out=out)


def _dense_chunk(x: Tensor, t: Tensor, b: _Buffers, alpha: float, gamma: float, grad: bool) -> None:
    """Loss factors and gradient of one chunk with dense targets.

    Leaves ``ce`` in ``b.l`` and ``a_t * q**gamma`` in ``b.q`` (loss = their product) and,
    when ``grad``, ``(p - t) + gamma * ce * r * (1 - 2t)`` in ``b.p`` (gradient = b.p * b.q).
    """
    # ce = softplus(-|x|) + (relu(x) - t x): both terms >= 0, so no cancellation at t = 1
    # (softplus(x) - t x would round a tiny loss to 0 or below).
    torch.abs(x, out=b.w).neg_()
    _softplus_into(b.w, b.l, None)  # x <= 0 here
    torch.clamp_min(x, 0.0, out=b.w).addcmul_(t, x, value=-1.0)
    b.l.add_(b.w)
    # p and 1 - p, each to full relative precision (1 - p is never formed by subtraction).
    torch.sigmoid(x, out=b.p)
    torch.neg(x, out=b.n).sigmoid_()
    torch.lerp(b.p, b.n, t, out=b.q)  # q = 1 - p_t = p (1 - t) + (1 - p) t, exact at t = 0, 1
    if grad:
        torch.mul(b.p, b.n, out=b.e)  # p (1 - p)
        # q == 0 only where p (1 - p) == 0 too; r = p (1 - p) / q is bounded by 1.
        b.e.div_(torch.clamp_min(b.q, torch.finfo(b.q.dtype).tiny, out=b.w)).mul_(b.l)
        b.e.addcmul_(t, b.e, value=-2.0)  # ce * r * (1 - 2t)
        b.p.sub_(t).add_(b.e, alpha=gamma)
    _pow_into(b.q, b.q, gamma, b.gamma)
    if alpha >= 0:
        torch.add(b.neg_weight, t, alpha=b.alpha_slope, out=b.w)  # a_t = 1 - a + (2a - 1) t
        b.q.mul_(b.w)


def _binary_targets(t: Tensor, b: _Buffers) -> bool:
    """Whether every target of the chunk is exactly 0 or 1: ``t - t * t`` is 0 there and
    nonzero (or NaN) anywhere else, tiny and huge targets included. One host sync.
    (``any()`` instead of ``abs_().sum()`` saves an op but took 62 against 20 µs a chunk.)"""
    torch.addcmul(t, t, t, value=-1.0, out=b.e)
    return b.e.abs_().sum().item() == 0


def _binary_chunk(
    x: Tensor, t: Tensor, b: _Buffers, alpha: float, gamma: float, grad: bool
) -> None:
    """As :func:`_dense_chunk` for targets that are all 0 or 1 (checked by the caller).

    With ``s = 1 - 2t`` and ``z = s x``: ``ce = softplus(z)``, ``q = 1 - p_t = sigmoid(z)``
    and ``d loss / dx = s a_t q**gamma (q + gamma ce (1 - q))``. ``1 - q`` is formed by
    subtraction: where it loses relative precision (q near 1) the ``q`` term dominates.
    """
    torch.sub(b.one, t, alpha=2.0, out=b.w)  # s
    z = torch.mul(x, b.w, out=b.e)
    _softplus_into(z, b.l, _softplus_threshold(x.dtype))
    torch.sigmoid(z, out=b.p)
    _pow_into(b.p, b.q, gamma, b.gamma)
    if alpha >= 0:
        b.q.mul_(torch.add(b.neg_weight, t, alpha=b.alpha_slope, out=b.e))  # a_t
    if grad:
        torch.sub(b.one, b.p, out=b.n)
        b.p.addcmul_(b.n, b.l, value=gamma).mul_(b.w)


def _negative_chunk(x: Tensor, b: _Buffers, alpha: float, gamma: float, grad: bool) -> None:
    """As :func:`_binary_chunk` with every target 0 (``s = 1``, ``z = x``)."""
    _softplus_into(x, b.l, _softplus_threshold(x.dtype))
    torch.sigmoid(x, out=b.p)
    if gamma == 2.0:  # the weighted square in one op
        torch.addcmul(b.zero, b.p, b.p, value=b.neg_weight_value, out=b.q)
    else:
        _pow_into(b.p, b.q, gamma, b.gamma)
        if alpha >= 0:
            b.q.mul_(b.neg_weight)
    if grad:
        torch.sub(b.one, b.p, out=b.n)
        b.p.addcmul_(b.n, b.l, value=gamma)


def _chunk_size(device: torch.device, n: int) -> int:
    # On CUDA a chunk is a few launches' worth of work, not a cache's worth: large chunks
    # keep the kernel count low while the buffers stay well under the input size.
    size = _CHUNK if device.type == "cpu" else 1 << 21
    return min(size, max(n, 1))


class _PositiveRows:
    """The class-id form's positives: per row of ``[R, C]`` logits, the column of its class
    and the loss and gradient there as a positive (t = 1).

    Rows whose id lies outside ``[0, C)`` are background. On CPU their indices are found
    with NumPy (there is no device to synchronise with) and only the positive entries are
    computed and written, a few percent of the rows in detection. Elsewhere every row is
    computed in blocks and background rows write back the value already in place, so no
    host sync is needed to skip them.
    """

    def __init__(
        self,
        x2d: Tensor,
        ids: Tensor,
        alpha: float,
        gamma: float,
        loss_dtype: torch.dtype,
        want_grad: bool,
    ) -> None:
        rows, num_classes = x2d.shape
        self.num_classes = num_classes
        device = x2d.device
        self.cdt = _compute_dtype(x2d.dtype)
        self.w_pos = alpha if alpha >= 0 else 1.0
        self.gamma = gamma
        self.gamma_t = torch.tensor(gamma, dtype=self.cdt)  # CPU 0-d: a scalar to CUDA ops too
        self.sparse = device.type == "cpu" and _SPARSE_POSITIVES_ON_CPU
        if self.sparse:
            ids_np = ids.numpy()
            valid_rows = np.flatnonzero((ids_np >= 0) & (ids_np < num_classes))
            # Flat element index of every positive entry, ascending.
            self.flat = valid_rows * num_classes + ids_np[valid_rows]
            self._spans: dict[int, tuple[int, int, Tensor]] = {}
            xg = x2d.reshape(-1).index_select(0, torch.from_numpy(self.flat))
            self.loss, self.grad = self._serial_positive_terms(xg, loss_dtype, x2d.dtype, want_grad)
            return
        self.valid = torch.empty(rows, dtype=torch.bool, device=device)
        self.index = torch.empty(rows, 1, dtype=torch.int64, device=device)
        self.loss = torch.empty(rows, dtype=loss_dtype, device=device)
        self.grad = torch.empty(rows, dtype=x2d.dtype, device=device) if want_grad else None
        block = _CHUNK if device.type == "cpu" else max(rows, 1)
        for r0 in range(0, rows, block):
            r1 = min(r0 + block, rows)
            block_ids = ids[r0:r1]
            valid = torch.logical_and(block_ids >= 0, block_ids < num_classes)
            self.valid[r0:r1] = valid
            index = self.index[r0:r1]
            index[:, 0] = torch.where(valid, block_ids, 0)
            xg = x2d[r0:r1].gather(1, index).squeeze(1)
            loss, grad = self._positive_terms(xg, loss_dtype, x2d.dtype, want_grad)
            self.loss[r0:r1] = loss
            if self.grad is not None and grad is not None:
                self.grad[r0:r1] = grad

    def _serial_positive_terms(
        self, xg: Tensor, loss_dtype: torch.dtype, grad_dtype: torch.dtype, want_grad: bool
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`_positive_terms` of CPU logits in slices of at most _CHUNK values: each op
        stays under ATen's grain, so none forks torch's threads (a fork in a process that
        later forks itself can hang the child), and the values do not depend on the thread
        count (a split across threads moves elements between the vectorized loop and its
        scalar tail, whose results may differ in the last bit)."""
        count = xg.numel()
        if count <= _CHUNK:
            return self._positive_terms(xg, loss_dtype, grad_dtype, want_grad)
        loss = torch.empty(count, dtype=loss_dtype)
        grad = torch.empty(count, dtype=grad_dtype) if want_grad else None
        for start in range(0, count, _CHUNK):
            stop = min(start + _CHUNK, count)
            part_loss, part_grad = self._positive_terms(
                xg[start:stop], loss_dtype, grad_dtype, want_grad
            )
            loss[start:stop] = part_loss
            if grad is not None and part_grad is not None:
                grad[start:stop] = part_grad
        return loss, grad

    def _positive_terms(
        self, xg: Tensor, loss_dtype: torch.dtype, grad_dtype: torch.dtype, want_grad: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Loss and gradient of logits ``xg`` as positives.

        With t = 1: ce = softplus(-x), q = 1 - p, r = p, so
        loss = a ce (1-p)**gamma, grad = -a (1-p)**gamma ((1 - p) + gamma ce p).
        """
        xg = xg.to(self.cdt)
        pn = torch.sigmoid(-xg)
        ce = torch.nn.functional.softplus(-xg, threshold=_softplus_threshold(self.cdt))
        qg = torch.empty_like(pn)
        _pow_into(pn, qg, self.gamma, self.gamma_t)
        loss = (ce * qg * self.w_pos).to(loss_dtype)
        if not want_grad:
            return loss, None
        grad = qg * (pn + self.gamma * ce * torch.sigmoid(xg)) * (-self.w_pos)
        return loss, grad.to(grad_dtype)

    def write(self, dst: Tensor, values: Tensor, start: int, stop: int) -> None:
        """Overwrite the positive entries of the flat elements ``[start, stop)``, held in
        ``dst`` (``[stop - start]``, whole rows), with their ``values``."""
        if self.sparse:
            span = self._spans.get(start)  # the loss and the gradient share a chunk's span
            if span is None:
                lo, hi = np.searchsorted(self.flat, (start, stop)).tolist()
                span = self._spans[start] = (lo, hi, torch.from_numpy(self.flat[lo:hi] - start))
            lo, hi, local = span
            if hi > lo:
                dst.index_copy_(0, local, values[lo:hi])
            return
        r0, r1 = start // self.num_classes, stop // self.num_classes
        rows = dst.view(-1, self.num_classes)
        index = self.index[r0:r1]
        kept = rows.gather(1, index)
        rows.scatter_(1, index, torch.where(self.valid[r0:r1, None], values[r0:r1, None], kept))


def _focal_dense_pass(
    x_flat: Tensor,
    t_flat: Tensor | None,
    alpha: float,
    gamma: float,
    reduction: str,
    want_grad: bool,
    positives: _PositiveRows | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Loss and gradient over flat contiguous inputs, chunk by chunk.

    ``t_flat`` is None for the class-id form: every element is a negative except the
    entries of ``positives`` (a :class:`_PositiveRows`), which are written over each chunk
    before it is stored or summed (so the sum never subtracts a value it counted). Returns
    the loss (``[n]`` in the input dtype for ``none``, else a float64 0-d sum) and the
    gradient of the *summed* loss (``[n]`` in the input dtype) or None.
    """
    n = x_flat.numel()
    dtype = x_flat.dtype
    cdt = _compute_dtype(dtype)
    device = x_flat.device
    size = _chunk_size(device, n)
    if positives is not None:  # chunks of whole rows
        size = max(size // positives.num_classes, 1) * positives.num_classes
    loss = torch.empty(n, dtype=dtype, device=device) if reduction == "none" else None
    grad = torch.empty(n, dtype=dtype, device=device) if want_grad else None
    for output in (loss, grad):  # written whole, chunk by chunk: map their pages at once
        if output is not None:
            populate_pages(output)
    sums = []
    convert_x = dtype != cdt
    convert_t = t_flat is not None and t_flat.dtype != cdt
    bufs = _Buffers(size, cdt, device, alpha, gamma)
    for start in range(0, n, size):
        stop = min(start + size, n)
        b = bufs if stop - start == size else bufs.cut(stop - start)
        xs = x_flat[start:stop]
        if convert_x:
            xs = b.x.copy_(xs)
        if t_flat is None:
            _negative_chunk(xs, b, alpha, gamma, want_grad)
        else:
            ts = t_flat[start:stop]
            if convert_t:
                ts = b.t.copy_(ts)
            # (on CPU only: elsewhere the check's host sync costs more than it saves)
            binary = device.type == "cpu" and _binary_targets(ts, b)
            (_binary_chunk if binary else _dense_chunk)(xs, ts, b, alpha, gamma, want_grad)
        chunk_loss = torch.mul(b.l, b.q, out=b.e if loss is None else loss[start:stop])
        if positives is not None:
            positives.write(chunk_loss, positives.loss, start, stop)
        if loss is None:
            sums.append(chunk_loss.sum())
        if grad is not None:
            chunk_grad = torch.mul(b.p, b.q, out=grad[start:stop])
            if positives is not None and positives.grad is not None:  # both or neither
                positives.write(chunk_grad, positives.grad, start, stop)
    if loss is None:
        loss = (
            torch.stack(sums).sum(dtype=torch.float64)
            if sums
            else torch.zeros((), dtype=torch.float64, device=device)
        )
    return loss, grad


def _focal_forward(
    inputs: Tensor,
    targets: Tensor | None,
    class_ids: Tensor | None,
    alpha: float,
    gamma: float,
    reduction: str,
    want_grad: bool,
    out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor | None]:
    """Loss (reduced as asked; ``none`` in ``inputs.dtype``, a reduction in ``out_dtype``)
    and d(sum of elementwise loss)/d inputs, against ``targets`` or the one-hot of
    ``class_ids`` (exactly one of the two is given)."""
    x = inputs.contiguous()
    x_flat = x.reshape(-1)
    n = x_flat.numel()
    if targets is not None:
        t_flat = targets.contiguous().reshape(-1)
        loss, grad = _focal_dense_pass(x_flat, t_flat, alpha, gamma, reduction, want_grad)
    elif class_ids is None:
        raise TypeError("_focal_forward: targets or class_ids must be given")
    else:
        positives = None
        if n > 0:
            x2d = x_flat.view(-1, x.shape[-1])
            loss_dtype = x.dtype if reduction == "none" else _compute_dtype(x.dtype)
            positives = _PositiveRows(
                x2d, class_ids.reshape(-1), alpha, gamma, loss_dtype, want_grad
            )
        loss, grad = _focal_dense_pass(x_flat, None, alpha, gamma, reduction, want_grad, positives)
    if reduction == "none":
        loss = loss.view(x.shape)
    elif reduction == "mean":
        loss = (loss / n if n > 0 else loss * 0.0).to(out_dtype)
    else:
        loss = loss.to(out_dtype)
    if grad is not None:
        grad = grad.view(x.shape)
    return loss, grad


class _SigmoidFocalLoss(torch.autograd.Function):
    """Forward computes loss and gradient together; backward only scales the gradient.

    The first backward scales the saved gradient in place and hands it to autograd: no
    second input-sized allocation (and its page faults). A later backward through the same
    graph (``retain_graph=True``, ``gradcheck``) recomputes the gradient from the saved
    inputs. Saving ``inputs`` keeps a reference, not a copy: peak memory equals that of an
    out-of-place backward (saved gradient + a new one) while the logits would otherwise be
    freed, and is lower when the caller holds them anyway.
    """

    @staticmethod
    def forward(
        ctx: Any,
        inputs: Tensor,
        targets: Tensor | None,
        class_ids: Tensor | None,
        alpha: float,
        gamma: float,
        reduction: str,
        op: str,
        out_dtype: torch.dtype,
    ) -> Tensor:
        want_grad = bool(ctx.needs_input_grad[0])
        loss, grad = _focal_forward(
            inputs, targets, class_ids, alpha, gamma, reduction, want_grad, out_dtype
        )
        ctx.options = (alpha, gamma, reduction)
        ctx.op = op
        ctx.grad = grad
        if want_grad:
            ctx.save_for_backward(inputs, targets, class_ids)
        return loss

    @staticmethod
    @_first_derivatives_only
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        alpha, gamma, reduction = ctx.options
        grad, ctx.grad = ctx.grad, None
        if grad is None:  # a second backward: recompute (the first one consumed it)
            inputs, targets, class_ids = ctx.saved_tensors
            _, grad = _focal_forward(
                inputs, targets, class_ids, alpha, gamma, "sum", True, inputs.dtype
            )
        if reduction == "mean":
            grad_output = grad_output / max(grad.numel(), 1)
        scale_in_place(grad, grad_output)
        return grad, None, None, None, None, None, None, None


def _check_common(
    op: str, inputs: object, alpha: object, gamma: object, reduction: object
) -> tuple[Tensor, float, float, str]:
    inputs = check_tensor(op, "inputs", inputs)
    check_floating(op, "inputs", inputs)
    alpha, gamma = _check_alpha_gamma(op, alpha, gamma)
    reduction = _check_reduction(op, reduction)
    return inputs, alpha, gamma, reduction


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """Sigmoid focal loss (RetinaNet), a drop-in for ``torchvision.ops.sigmoid_focal_loss``.

    ``loss = a_t * ce * (1 - p_t) ** gamma`` elementwise (see the module docstring for the
    notation); ``alpha = -1`` turns the ``a_t`` weighting off.

    The forward pass computes the loss and, when ``inputs`` requires grad, the closed-form
    gradient in one fused sweep over cache-sized chunks. On CPU every chunk is smaller than
    ATen's parallel grain, so its ops run serially in the calling thread; torch's thread
    settings are never read or changed. That gradient (one tensor the size of
    ``inputs``) is kept for backward, which scales it by ``grad_output`` in place and hands
    it over; a second backward through the same graph (``retain_graph=True``,
    ``gradcheck``) recomputes it from the saved ``inputs`` (a reference, not a copy). Peak
    extra memory: the gradient, the ``none`` output and 1 MiB of chunk buffers (measured at
    16 x 20267 x 80: 1.0x the input for ``sum``, 2.0x for ``none``; torchvision 10x).

    Numerics: where every target of a chunk is 0 or 1 (checked on CPU), ``z = (1 - 2t) x``
    gives ``ce = softplus(z)`` and ``1 - p_t = sigmoid(z)``, each to full relative
    precision; otherwise ``ce`` is ``softplus(-|x|) + (relu(x) - t x)``, a sum of
    non-negative terms, and ``1 - p`` is never formed by subtraction. Either way loss and
    gradient are finite and accurate for every finite logit (``|x| = 1e4`` included) and every
    ``gamma >= 0`` (the gradient of ``(1 - p_t) ** gamma`` is written through a bounded
    ratio, so ``0 < gamma < 1`` at saturated logits gives 0, not torchvision's NaN).
    float16 and bfloat16 are computed in float32 (no NaN at logit 9.39 as in mmcv's fp16
    kernel) and the results are cast back: the loss and the gradient have ``inputs.dtype``.

    Args:
        inputs (Tensor[*]): logits, any floating dtype and shape.
        targets (Tensor[*]): same shape as ``inputs``; any floating dtype. Values in
            [0, 1]: 0/1 labels or soft targets. Treated as constants: no gradient flows to
            them, and a ``targets`` that requires grad (with grad mode on) raises, so the
            gradient is never dropped silently (``detach()`` it first).
        alpha (float): weight of the positive class in [0, 1], or -1 for no weighting. A
            Python or NumPy number, or a one-element tensor that does not require grad.
        gamma (float): focusing exponent, ``>= 0``; the same kinds of number.
        reduction (str): ``"none"`` (shape of ``inputs``), ``"mean"`` or ``"sum"`` (0-d).
            The mean over an empty input is 0 (torchvision gives NaN) and still has a
            gradient path (an empty gradient).

    Returns:
        Tensor: the loss, dtype and device of ``inputs``.

    Raises:
        TypeError: non-tensor or non-floating inputs/targets, non-number alpha/gamma.
        ValueError: shape or device mismatch; alpha outside [0, 1] and not -1; gamma < 0;
            unknown reduction; targets requiring grad.

    Note:
        Eager autograd gives first derivatives only: a backward with ``create_graph=True``
        raises RuntimeError (rather than give a second derivative without this loss's
        term). Under ``torch.func`` transforms (``grad``, ``vmap``, ``jvp``, ``hessian``,
        ...) and forward-mode AD the same formulas run as plain torch ops (slower, with
        input-sized intermediates), and every derivative order is autograd's (a jvp
        carries a tangent of ``targets`` through too, as torchvision's does; ``grad``
        with respect to ``targets`` raises, as in eager). Reductions
        accumulate per-chunk sums in float64 and round once into the output dtype (a
        float16 sum above 65504 is inf, as torchvision's).
    """
    return _dense_focal("sigmoid_focal_loss", inputs, targets, alpha, gamma, reduction)


def _dense_focal(
    op: str, inputs: object, targets: object, alpha: object, gamma: object, reduction: object
) -> Tensor:
    inputs, targets, alpha, gamma, reduction = _check_dense(
        op, inputs, targets, alpha, gamma, reduction
    )
    return _apply_focal(inputs, targets, None, alpha, gamma, reduction, op)


def _check_dense(
    op: str, inputs: object, targets: object, alpha: object, gamma: object, reduction: object
) -> tuple[Tensor, Tensor, float, float, str]:
    inputs, alpha, gamma, reduction = _check_common(op, inputs, alpha, gamma, reduction)
    targets = check_tensor(op, "targets", targets)
    check_floating(op, "targets", targets)
    if targets.shape != inputs.shape:
        raise ValueError(
            f"{op}: targets must have the shape of inputs {shape_str(inputs)}, "
            f"got {shape_str(targets)}"
        )
    check_same_device(op, inputs=inputs, targets=targets)
    if targets.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{op}: targets must not require grad (no gradient flows to targets), "
            "got a tensor with requires_grad=True; pass targets.detach()"
        )
    return inputs, targets, alpha, gamma, reduction


def sigmoid_focal_loss_grad(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """The gradient of :func:`sigmoid_focal_loss` w.r.t. ``inputs``, through its autograd
    backward with ``grad_output`` all ones: of ``loss.sum()`` for ``none`` and ``sum``, of
    the mean for ``mean``.

    In closed form (module docstring notation), element ``i`` is
    ``a_t * q**gamma * ((p - t) + gamma * ce * r * (1 - 2t))`` (divided by N for
    ``mean``); finite for every finite logit and every ``gamma >= 0``. Arguments, errors and
    dtypes as :func:`sigmoid_focal_loss`; ``inputs`` need not require grad.

    Returns:
        Tensor: shape, dtype and device of ``inputs``.
    """
    op = "sigmoid_focal_loss_grad"
    check_tensor(op, "inputs", inputs)
    if torch.compiler.is_compiling():  # the custom op's gradient, scaled as backward does
        x = inputs.detach()
        t = targets.detach() if isinstance(targets, Tensor) else targets
        x, t, alpha, gamma, reduction = _check_dense(op, x, t, alpha, gamma, reduction)
        _, grad = _focal_op(x, t, None, alpha, gamma, reduction, True)
        scale = torch.ones((), dtype=grad.dtype, device=grad.device)
        if reduction == "mean":
            scale = scale / max(grad.numel(), 1)
        return grad * scale
    if under_function_transform():  # (requires_grad_ is refused there)
        x, t, alpha, gamma, reduction = _check_dense(op, inputs, targets, alpha, gamma, reduction)

        def total(logits: Tensor) -> Tensor:
            return _composite_focal(logits, t, None, alpha, gamma, reduction, x.dtype).sum()

        return torch.func.grad(total)(x)
    with torch.enable_grad():
        x = inputs.detach().requires_grad_()
        t = targets.detach() if isinstance(targets, Tensor) else targets
        loss = _dense_focal(op, x, t, alpha, gamma, reduction)
        (grad,) = torch.autograd.grad(loss, x, torch.ones_like(loss))
    return grad


def sigmoid_focal_loss_from_class_ids(
    inputs: Tensor,
    class_ids: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """Sigmoid focal loss against a one-hot target given by class indices.

    Equals ``sigmoid_focal_loss(inputs, one_hot(class_ids), ...)`` where row ``i`` of the
    one-hot has a single 1 at ``class_ids[i]``, and background rows are all zero, without
    materializing the one-hot: the loss and gradient of the positive entries are computed
    first (on CPU only those of the rows whose id lies in ``[0, C)``, found with NumPy;
    elsewhere every row's, with no host sync), then one fused pass over row-aligned chunks
    treats every element as a negative and writes the positive entries over each chunk
    before it is stored or summed (so a sum never subtracts what it counted).

    Args:
        inputs (Tensor[..., C]): logits, any floating dtype.
        class_ids (Tensor[...]): integer class per row, shape ``inputs.shape[:-1]``. Every
            id outside ``[0, C)`` (``-1`` by convention) marks a background row (all-zero
            target). Ids ``>= C`` are not rejected: checking would need a host sync.
        alpha, gamma, reduction: as :func:`sigmoid_focal_loss`.

    Returns:
        Tensor: ``[..., C]`` for ``"none"``, else 0-d; dtype and device of ``inputs``.
        Numerics, dtypes, memory and autograd as :func:`sigmoid_focal_loss`.
    """
    op = "sigmoid_focal_loss_from_class_ids"
    inputs, alpha, gamma, reduction = _check_common(op, inputs, alpha, gamma, reduction)
    class_ids = check_tensor(op, "class_ids", class_ids)
    check_integer_dtype(op, "class_ids", class_ids)
    inputs = check_shape(op, "inputs", inputs, "[..., C]")
    if class_ids.shape != inputs.shape[:-1]:
        expected = "[" + ", ".join(str(s) for s in inputs.shape[:-1]) + "]"
        raise ValueError(
            f"{op}: class_ids must have shape inputs.shape[:-1] = {expected}, "
            f"got {shape_str(class_ids)}"
        )
    check_same_device(op, inputs=inputs, class_ids=class_ids)
    return _apply_focal(inputs, None, class_ids.long(), alpha, gamma, reduction, op)


def _check_normalizer(op: str, normalizer: object) -> float | Tensor:
    if isinstance(normalizer, Tensor):
        check_tensor(op, "normalizer", normalizer)
        if normalizer.dim() != 0:
            raise ValueError(
                f"{op}: normalizer must be a float or a 0-d tensor, got a tensor of shape "
                f"{shape_str(normalizer)}"
            )
        check_floating(op, "normalizer", normalizer)
        return normalizer.detach()
    value = check_number(op, "normalizer", normalizer, expected="a float or a 0-d tensor")
    if not (value > 0 and is_finite(value)):
        raise ValueError(f"{op}: normalizer must be a positive finite number, got {normalizer}")
    return value


def fcos_loss(
    pred_cls_logits: Tensor,
    pred_boxreg_deltas: Tensor,
    pred_ctr_logits: Tensor,
    matched_gt_boxes: Tensor,
    matched_gt_deltas: Tensor,
    normalizer: float | Tensor,
    *,
    momentum: float = 0.9,
    positives_per_image: Tensor | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """The FCOS training loss of the course code, as a stateless, vectorized function.

    All inputs have the FPN levels concatenated along ``L`` (the order does not matter as
    long as all five agree). Location ``(b, l)`` is *positive* when its matched class
    ``matched_gt_boxes[b, l, 4]`` is not -1. With ``B`` images:

    * ``new_normalizer = momentum * normalizer + (1 - momentum) * num_positive / B``
      (the EMA of positives per image that the course module kept as state), where
      ``num_positive / B`` is replaced by ``positives_per_image`` when it is given (under
      DDP, the count over every rank's batch: see
      :func:`detops.distributed.global_positives_per_image`), so that every rank divides by
      the same normalizer as one process with the global batch would;
    * ``loss_cls``: the sum of :func:`sigmoid_focal_loss` (alpha 0.25, gamma 2) against the
      one-hot of the matched class (background rows all zero). The one-hot is never built:
      :func:`sigmoid_focal_loss_from_class_ids` takes the class ids;
    * ``loss_box``: the sum of ``0.25 * |pred_boxreg_deltas - matched_gt_deltas|`` over
      the locations whose four GT deltas are all ``>= 0``. A row with any negative delta
      is background and counts 0 as a whole: the ``(-1, -1, -1, -1)`` rows of
      :func:`detops.fcos_get_deltas_from_locations`, or a location outside its box such
      as ``(1, -1, 1, 1)``. The course code masks each delta separately; on its data,
      where background rows are all -1, the two agree;
    * ``loss_ctr``: the sum of ``binary_cross_entropy_with_logits(pred_ctr_logits, c)``
      with ``c = fcos_make_centerness_targets(matched_gt_deltas)``, over the locations
      where ``c >= 0``: the same rows, as ``c`` is -1 where any delta is negative;
    * each loss is its sum divided by ``new_normalizer * B``. If that is 0 (only with
      ``momentum = 0`` and no positive, or a zero tensor normalizer) the sums are divided
      by 1 instead, as FCOS's ``max(num_pos, 1)``, so the losses stay finite. With no
      positive at all, ``loss_box`` and ``loss_ctr`` are 0 and ``loss_cls`` is the
      all-negative focal loss.

    No Python loop over images or locations and, on CUDA, no host synchronization: the
    normalizer stays a tensor (a float ``normalizer`` is turned into one), and the box and
    centerness terms are computed on every row with the others zeroed. On CPU those terms
    gather only the counted rows (found with NumPy), a few percent of all. The three sums and their
    closed-form gradients are computed in the forward pass; backward scales them. The focal
    part runs in cache-sized chunks in the calling thread, as :func:`sigmoid_focal_loss`
    does; torch's thread settings are never read or changed.

    Args:
        pred_cls_logits (Tensor[B, L, C]): class logits, floating.
        pred_boxreg_deltas (Tensor[B, L, 4]): predicted LTRB deltas (in strides).
        pred_ctr_logits (Tensor[B, L, 1]): centerness logits.
        matched_gt_boxes (Tensor[B, L, 5]): ``(x1, y1, x2, y2, class)`` matched to every
            location (:func:`detops.fcos_match_locations_to_gt`); only the class column is
            read, truncated to an integer. Classes of positive rows must lie in
            ``[0, C)``; a class ``>= C`` or a negative one other than -1 is background for
            ``loss_cls`` (not rejected: that would need a host sync) but counts as positive
            in the normalizer (as in the course code, which tests ``!= -1``).
        matched_gt_deltas (Tensor[B, L, 4]): GT deltas of every location
            (:func:`detops.fcos_get_deltas_from_locations`); a row with any negative delta
            (-1 rows) or a NaN delta is background for ``loss_box`` and ``loss_ctr``, which
            compute on the other rows only.
        normalizer (float or Tensor[]): the running normalizer (> 0 for a float).
        momentum (float): EMA momentum in [0, 1].
        positives_per_image (Tensor[], optional): positives per image to update the EMA
            with instead of this batch's own count (0-d, any floating dtype, same device).

    Returns:
        (dict, Tensor): ``{"loss_cls", "loss_box", "loss_ctr"}`` 0-d tensors and the new
        normalizer (0-d, detached). Losses are in the dtype of ``pred_cls_logits``
        promoted to at least float32 (float16/bfloat16 predictions give float32 losses,
        as autocast does); the normalizer in that dtype promoted with a tensor
        ``normalizer``'s. Device: that of the predictions. Gradients flow to the three
        predictions only (eager autograd gives first derivatives: a backward with
        ``create_graph=True`` raises RuntimeError; a second backward through the same
        graph recomputes them). Under ``torch.func`` transforms and forward-mode AD the
        sums run as plain torch ops, as :func:`sigmoid_focal_loss` does there.
    """
    op = "fcos_loss"
    patterns = {
        "pred_cls_logits": "[B, L, C]",
        "pred_boxreg_deltas": "[B, L, 4]",
        "pred_ctr_logits": "[B, L, 1]",
        "matched_gt_boxes": "[B, L, 5]",
        "matched_gt_deltas": "[B, L, 4]",
    }
    named = {
        name: check_shape(op, name, value, patterns[name], dtype="floating")
        for name, value in (
            ("pred_cls_logits", pred_cls_logits),
            ("pred_boxreg_deltas", pred_boxreg_deltas),
            ("pred_ctr_logits", pred_ctr_logits),
            ("matched_gt_boxes", matched_gt_boxes),
            ("matched_gt_deltas", matched_gt_deltas),
        )
    }
    batch, num_loc = pred_cls_logits.shape[:2]
    for name, value in named.items():
        if value.shape[:2] != (batch, num_loc):
            raise ValueError(
                f"{op}: {name} must have shape {patterns[name]} with B, L = {batch}, {num_loc} "
                f"(from pred_cls_logits), got {shape_str(value)}"
            )
    check_same_device(op, **named)
    normalizer = _check_normalizer(op, normalizer)
    momentum = check_unit_interval(op, "momentum", momentum)

    device = pred_cls_logits.device
    loss_dtype = torch.promote_types(pred_cls_logits.dtype, torch.float32)
    norm_dtype = loss_dtype
    old: Tensor | float = normalizer  # a Python float stays a kernel argument: no H2D copy
    if isinstance(normalizer, Tensor):
        norm_dtype = torch.promote_types(norm_dtype, normalizer.dtype)
        old = normalizer.to(device=device, dtype=norm_dtype)

    classes = matched_gt_boxes[..., 4].detach()
    class_ids, positive_count = _class_ids(classes)
    if positives_per_image is None:
        new_positives = positive_count.to(norm_dtype) * ((1.0 - momentum) / batch)
    else:
        check_tensor(op, "positives_per_image", positives_per_image)
        check_floating(op, "positives_per_image", positives_per_image)
        if positives_per_image.dim() != 0:
            raise ValueError(
                f"{op}: positives_per_image must be a 0-d tensor, got "
                f"{shape_str(positives_per_image)}"
            )
        check_same_device(
            op, pred_cls_logits=pred_cls_logits, positives_per_image=positives_per_image
        )
        new_positives = positives_per_image.detach().to(norm_dtype) * (1.0 - momentum)
    new_normalizer = new_positives + momentum * old
    denominator = new_normalizer * batch
    denominator = torch.where(denominator == 0, 1.0, denominator).to(loss_dtype)
    sums_of = (
        pred_cls_logits,
        pred_boxreg_deltas,
        pred_ctr_logits,
        class_ids,
        matched_gt_deltas.detach(),
        loss_dtype,
    )
    if torch.compiler.is_compiling():
        loss_cls, loss_box, loss_ctr = _fcos_loss_sums_op(*sums_of)[:3]
    elif under_function_transform():
        loss_cls, loss_box, loss_ctr = _composite_fcos_loss_sums(*sums_of)
    else:
        loss_cls, loss_box, loss_ctr = _FCOSLossSums.apply(*sums_of)
    losses = {
        "loss_cls": loss_cls / denominator,
        "loss_box": loss_box / denominator,
        "loss_ctr": loss_ctr / denominator,
    }
    return losses, new_normalizer.detach()


def _class_ids(classes: Tensor) -> tuple[Tensor, Tensor]:
    """The matched class column as int64 ids (-1 for every negative class: -0.5 is not 0)
    and the number of rows whose class is not -1 (a 0-d int64 tensor). On CPU in NumPy:
    two passes over a strided column, not four torch ops on it."""
    if (
        classes.device.type == "cpu"
        and classes.dtype in (torch.float32, torch.float64)
        and plain_eager_mode()
    ):
        values = classes.numpy()
        with np.errstate(invalid="ignore"):  # NaN and inf classes: background, as in torch
            ids = values.astype(np.int64)
        ids[values < 0] = -1
        return torch.from_numpy(ids), torch.tensor(np.count_nonzero(values != -1))
    return torch.where(classes < 0, -1, classes.to(torch.int64)), (classes != -1).sum()


def _fcos_loss_sums(
    cls: Tensor,
    box: Tensor,
    ctr: Tensor,
    class_ids: Tensor,
    gt_deltas: Tensor,
    loss_dtype: torch.dtype,
    needs_grad: tuple[bool, bool, bool],
) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor | None, Tensor | None, Tensor | None]]:
    """The three loss sums (0-d, ``loss_dtype``) and their gradients w.r.t. the three
    predictions (in the predictions' dtypes; None where not needed)."""
    loss_cls, grad_cls = _focal_forward(
        cls, None, class_ids, 0.25, 2.0, "sum", needs_grad[0], loss_dtype
    )
    (loss_box, loss_ctr), (grad_box, grad_ctr) = _box_and_centerness_sums(
        box, ctr, gt_deltas, loss_dtype, needs_grad[1], needs_grad[2]
    )
    return (loss_cls, loss_box, loss_ctr), (grad_cls, grad_box, grad_ctr)


def _box_and_centerness_sums(
    box: Tensor,
    ctr: Tensor,
    gt_deltas: Tensor,
    loss_dtype: torch.dtype,
    box_grad: bool,
    ctr_grad: bool,
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor | None, Tensor | None]]:
    """``loss_box`` and ``loss_ctr`` sums and their gradients.

    A row counts for ``loss_box`` only when all four GT deltas are ``>= 0`` (a row with any
    negative or NaN delta is background: the -1 rows, a location outside its box), and for
    ``loss_ctr`` only when its centerness is ``>= 0`` as well (not NaN, as with an infinite
    delta). On CPU only the counted rows (a few percent of all) are gathered and computed,
    which needs their indices on the host; elsewhere every row is computed and the others
    are zeroed, with no host synchronization.
    """
    gt = gt_deltas.to(loss_dtype)
    if box.device.type == "cpu" and _FOREGROUND_ROWS_ON_CPU:
        gt = gt.reshape(-1, 4)
        counted_rows = _foreground_rows(gt)
        gt = gt.index_select(0, counted_rows)
        pred = box.detach().reshape(-1, 4).index_select(0, counted_rows).to(loss_dtype)
        logits = ctr.detach().reshape(-1).index_select(0, counted_rows).to(loss_dtype)
        diff = pred - gt
        rows: Tensor | None = counted_rows
    else:
        rows = None
        inside = (gt >= 0).all(dim=-1, keepdim=True)
        diff = torch.where(inside, box.detach().to(loss_dtype) - gt, 0)
        logits = ctr.detach()[..., 0].to(loss_dtype)
    loss_box = diff.abs().sum().mul_(0.25)
    centerness = fcos_make_centerness_targets(gt)
    counted = centerness >= 0  # -1 on background rows, NaN with an infinite delta
    target = torch.where(counted, centerness, 0)
    # BCE with logits, (1 - c) x + log(1 + exp(-x)), written out: torch's fused kernel
    # forks threads even at a few hundred rows.
    softplus = torch.nn.functional.softplus(-logits, threshold=_softplus_threshold(loss_dtype))
    loss_ctr = torch.where(counted, (1 - target).mul_(logits).add_(softplus), 0).sum()
    grad_box = grad_ctr = None
    if box_grad:  # d|d|/dd = sign(d), 0 at d = 0 (as autograd's abs)
        grad_box = diff.sign_().mul_(0.25).to(box.dtype)
        if rows is not None:
            grad_box = _scattered_rows(grad_box, rows, box)
    if ctr_grad:  # d BCE / dx = sigmoid(x) - c
        grad_ctr = torch.where(counted, logits.sigmoid().sub_(target), 0).to(ctr.dtype)
        grad_ctr = grad_ctr.unsqueeze(-1) if rows is None else _scattered_rows(grad_ctr, rows, ctr)
    return (loss_box, loss_ctr), (grad_box, grad_ctr)


def _scattered_rows(values: Tensor, rows: Tensor, like: Tensor) -> Tensor:
    """A zero tensor shaped as ``like`` whose flattened rows ``rows`` hold ``values``."""
    out = zeros(like.shape, like.dtype, like.device)
    out.view(-1, like.shape[-1]).index_copy_(0, rows, values.view(-1, like.shape[-1]))
    return out


def _foreground_rows(gt: Tensor) -> Tensor:
    """Indices of the rows of ``gt [N, 4]`` whose four deltas are all ``>= 0`` (a NaN is
    not); NumPy on CPU, which forks no thread at any size."""
    if gt.device.type == "cpu" and gt.dtype in (torch.float32, torch.float64):
        # A row's four booleans read as one uint32 (NumPy's all(axis=1) over 4 is slow).
        nonneg = np.ascontiguousarray(gt.numpy() >= 0).view(np.uint32).reshape(-1)
        return torch.from_numpy(np.flatnonzero(nonneg == _FOUR_TRUE))
    return (gt >= 0).all(dim=1).nonzero().squeeze(1)


_FOUR_TRUE = int(np.ones(4, dtype=np.bool_).view(np.uint32)[0])


class _FCOSLossSums(torch.autograd.Function):
    """Forward computes the three sums and their closed-form gradients; backward scales the
    gradients in place. A second backward recomputes, as :class:`_SigmoidFocalLoss` does."""

    @staticmethod
    def forward(
        ctx: Any,
        cls: Tensor,
        box: Tensor,
        ctr: Tensor,
        class_ids: Tensor,
        gt_deltas: Tensor,
        loss_dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor, Tensor]:
        grad_of = ctx.needs_input_grad
        needs = (bool(grad_of[0]), bool(grad_of[1]), bool(grad_of[2]))
        sums, grads = _fcos_loss_sums(cls, box, ctr, class_ids, gt_deltas, loss_dtype, needs)
        ctx.grads = grads
        ctx.options = (loss_dtype, needs)
        ctx.op = "fcos_loss"
        if any(needs):
            ctx.save_for_backward(cls, box, ctr, class_ids, gt_deltas)
        return sums

    @staticmethod
    @_first_derivatives_only
    def backward(
        ctx: Any, grad_cls: Tensor, grad_box: Tensor, grad_ctr: Tensor
    ) -> tuple[Tensor | None, ...]:
        loss_dtype, needs = ctx.options
        grads, ctx.grads = ctx.grads, None
        if grads is None:  # a second backward through the same graph
            cls, box, ctr, class_ids, gt_deltas = ctx.saved_tensors
            _, grads = _fcos_loss_sums(cls, box, ctr, class_ids, gt_deltas, loss_dtype, needs)
        for grad, scale in zip(grads, (grad_cls, grad_box, grad_ctr), strict=True):
            if grad is not None:
                scale_in_place(grad, scale)
        return (*grads, None, None, None)


# ----------------------------------------------------------------------------------------
# torch.func transforms and forward-mode AD: the losses as differentiable torch ops
# ----------------------------------------------------------------------------------------
# The fused autograd Functions give first derivatives by hand, which vmap, jvp and
# higher-order derivatives cannot see through. Under those transforms the same formulas
# (module docstring) run as plain torch ops, and autograd derives every order. Slower and
# input-sized intermediates, but these are transforms users reach for in analysis, where
# torchvision's focal loss works too.


def _composite_focal(
    inputs: Tensor,
    targets: Tensor | None,
    class_ids: Tensor | None,
    alpha: float,
    gamma: float,
    reduction: str,
    out_dtype: torch.dtype,
) -> Tensor:
    """The focal loss of the module docstring in differentiable torch ops. ``ce`` is
    ``t * softplus(-x) + (1 - t) * softplus(x)`` (both terms non-negative, smooth at
    ``x = 0``); ``q ** gamma`` is taken where ``q > 0`` and is 0 where ``q`` underflows,
    the limit of the term and of its derivatives (autograd's ``q ** (gamma - 1)`` there
    would be inf, and the gradient NaN)."""
    x = inputs.to(_compute_dtype(inputs.dtype))
    if class_ids is not None:
        classes = torch.arange(x.shape[-1], device=x.device)
        t = (class_ids.unsqueeze(-1) == classes).to(x.dtype)
    else:
        assert targets is not None
        t = targets.to(x.dtype)
    threshold = _softplus_threshold(x.dtype)
    softplus = torch.nn.functional.softplus
    loss = t * softplus(-x, threshold=threshold) + (1 - t) * softplus(x, threshold=threshold)
    if gamma != 0:
        q = torch.sigmoid(x) * (1 - t) + torch.sigmoid(-x) * t
        positive = q > 0
        modulating = torch.where(positive, torch.where(positive, q, 1.0) ** gamma, 0.0)
        loss = loss * modulating
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    if reduction == "none":
        return loss.to(out_dtype)
    total = loss.sum(dtype=torch.float64 if loss.device.type != "mps" else None)
    if reduction == "mean":
        total = total / max(loss.numel(), 1)
    return total.to(out_dtype)


def _composite_fcos_loss_sums(
    cls: Tensor,
    box: Tensor,
    ctr: Tensor,
    class_ids: Tensor,
    gt_deltas: Tensor,
    loss_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """The three sums of :func:`fcos_loss` in differentiable torch ops, every row computed
    and the uncounted ones zeroed (the rules of :func:`_box_and_centerness_sums`)."""
    loss_cls = _composite_focal(cls, None, class_ids, 0.25, 2.0, "sum", loss_dtype)
    gt = gt_deltas.to(loss_dtype)
    inside = (gt >= 0).all(dim=-1, keepdim=True)
    loss_box = torch.where(inside, box.to(loss_dtype) - gt, 0).abs().sum() * 0.25
    centerness = fcos_make_centerness_targets(gt)
    counted = centerness >= 0
    target = torch.where(counted, centerness, 0)
    logits = ctr[..., 0].to(loss_dtype)
    softplus = torch.nn.functional.softplus(-logits, threshold=_softplus_threshold(loss_dtype))
    loss_ctr = torch.where(counted, (1 - target) * logits + softplus, 0).sum()
    return loss_cls, loss_box, loss_ctr


# ----------------------------------------------------------------------------------------
# torch.compile: the fused losses as opaque custom ops with a registered backward
# ----------------------------------------------------------------------------------------
# Eager calls use the autograd Functions above (their backward scales the saved gradient in
# place, with no second input-sized allocation). While compiling, the same fused forward
# runs as one custom op that also returns the gradient of the summed loss; its registered
# backward scales it. The chunked, threaded forward is not traced.


def _apply_focal(
    inputs: Tensor,
    targets: Tensor | None,
    class_ids: Tensor | None,
    alpha: float,
    gamma: float,
    reduction: str,
    op: str,
) -> Tensor:
    if torch.compiler.is_compiling():
        want_grad = inputs.requires_grad and torch.is_grad_enabled()
        loss, _ = _focal_op(inputs, targets, class_ids, alpha, gamma, reduction, want_grad)
        return loss
    if under_function_transform():
        return _composite_focal(inputs, targets, class_ids, alpha, gamma, reduction, inputs.dtype)
    return _SigmoidFocalLoss.apply(
        inputs, targets, class_ids, alpha, gamma, reduction, op, inputs.dtype
    )


@torch.library.custom_op("detops::sigmoid_focal_loss", mutates_args=())
def _focal_op(
    inputs: Tensor,
    targets: Tensor | None,
    class_ids: Tensor | None,
    alpha: float,
    gamma: float,
    reduction: str,
    want_grad: bool,
) -> tuple[Tensor, Tensor]:
    """(loss, d sum(loss) / d inputs, or an empty tensor when not ``want_grad``)."""
    with torch.no_grad():
        loss, grad = _focal_forward(
            inputs, targets, class_ids, alpha, gamma, reduction, want_grad, inputs.dtype
        )
    return loss, grad if grad is not None else inputs.new_empty(0)


@_focal_op.register_fake
def _(
    inputs: Tensor,
    targets: Tensor | None,
    class_ids: Tensor | None,
    alpha: float,
    gamma: float,
    reduction: str,
    want_grad: bool,
) -> tuple[Tensor, Tensor]:
    loss = inputs.new_empty(inputs.shape if reduction == "none" else ())
    return loss, inputs.new_empty(inputs.shape if want_grad else (0,))


def _focal_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    ctx.save_for_backward(output[1])
    ctx.count = max(inputs[0].numel(), 1) if inputs[5] == "mean" else None


def _focal_backward(
    ctx: Any, grad_loss: Tensor, _grad_of_grad: Tensor
) -> tuple[Tensor | None, ...]:
    (grad,) = ctx.saved_tensors
    if ctx.count is not None:  # (divided as eager's backward does: g * (1 / n) is not g / n)
        grad_loss = grad_loss / ctx.count
    return grad * grad_loss, None, None, None, None, None, None


_focal_op.register_autograd(_focal_backward, setup_context=_focal_setup_context)


@torch.library.custom_op("detops::fcos_loss_sums", mutates_args=())
def _fcos_loss_sums_op(
    cls: Tensor,
    box: Tensor,
    ctr: Tensor,
    class_ids: Tensor,
    gt_deltas: Tensor,
    loss_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The three loss sums and their gradients w.r.t. the three predictions."""
    with torch.no_grad():
        sums, grads = _fcos_loss_sums(
            cls, box, ctr, class_ids, gt_deltas, loss_dtype, (True, True, True)
        )
    grad_cls, grad_box, grad_ctr = grads
    assert grad_cls is not None and grad_box is not None and grad_ctr is not None  # all asked
    return (*sums, grad_cls, grad_box, grad_ctr)


@_fcos_loss_sums_op.register_fake
def _(
    cls: Tensor,
    box: Tensor,
    ctr: Tensor,
    class_ids: Tensor,
    gt_deltas: Tensor,
    loss_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    loss_cls, loss_box, loss_ctr = (cls.new_empty((), dtype=loss_dtype) for _ in range(3))
    grads = torch.empty_like(cls), torch.empty_like(box), torch.empty_like(ctr)
    return (loss_cls, loss_box, loss_ctr, *grads)


def _fcos_loss_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    ctx.save_for_backward(*output[3:])


def _fcos_loss_backward(
    ctx: Any, grad_cls: Tensor, grad_box: Tensor, grad_ctr: Tensor, *_grads_of_grads: Tensor
) -> tuple[Tensor | None, ...]:
    grads = ctx.saved_tensors
    scales = (grad_cls, grad_box, grad_ctr)
    return (*(g * s for g, s in zip(grads, scales, strict=True)), None, None, None)


_fcos_loss_sums_op.register_autograd(_fcos_loss_backward, setup_context=_fcos_loss_setup_context)
