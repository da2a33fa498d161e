"""sigmoid_focal_loss (dense and class-id forms): torchvision parity, gradients, numerics.

The comparison against the NumPy reference on hypothesis inputs is in
tests/test_against_reference.py (registry entries in detops/testing/families/losses.py);
this file pins torchvision parity, autograd, the known peer failures and the error table.
"""

import contextlib
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torchvision

import reference.losses as ref
from detops import losses
from detops.losses import (
    sigmoid_focal_loss,
    sigmoid_focal_loss_from_class_ids,
    sigmoid_focal_loss_grad,
)
from detops.testing.compare import assert_trees_close
from detops.testing.families.losses import FOCAL_TOLERANCES

ALPHAS = [-1.0, 0.0, 0.25, 1.0]
GAMMAS = [0.0, 0.5, 2.0]
REDUCTIONS = ["none", "mean", "sum"]


@pytest.fixture(params=["sparse", "dense"])
def positives_path(request, monkeypatch):
    """On CPU the class-id form computes only the positive entries (their indices found
    with NumPy); other devices compute every row, with no host sync. Both run on CPU."""
    monkeypatch.setattr(losses, "_SPARSE_POSITIVES_ON_CPU", request.param == "sparse")
    return request.param


def _inputs(shape, dtype, device, seed=0, soft=False, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    if soft:
        t = torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype)
    else:
        t = (torch.rand(shape, generator=gen) < 0.3).to(dtype)
    return x.to(device), t.to(device)


def _value_and_grad(fn, x, *args, **kwargs):
    leaf = x.detach().clone().requires_grad_()
    loss = fn(leaf, *args, **kwargs)
    gen = torch.Generator().manual_seed(7)
    weight = torch.rand(loss.shape, generator=gen, dtype=torch.float64).to(loss)
    (grad,) = torch.autograd.grad((loss * weight).sum(), leaf)
    return loss.detach(), grad


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torchvision_forward_and_autograd(alpha, gamma, reduction, dtype, device):
    # |x| <= ~12 keeps torchvision's own gradient finite (its NaN is pinned below).
    x, t = _inputs((4, 37, 5), dtype, device)
    ours = _value_and_grad(sigmoid_focal_loss, x, t, alpha, gamma, reduction)
    theirs = _value_and_grad(torchvision.ops.sigmoid_focal_loss, x, t, alpha, gamma, reduction)
    assert ours[0].dtype == theirs[0].dtype == dtype
    assert ours[0].shape == theirs[0].shape
    assert_trees_close(ours, theirs, FOCAL_TOLERANCES[dtype], f"{alpha=} {gamma=} {reduction=}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_torchvision_with_soft_targets(reduction, device):
    x, t = _inputs((3, 50, 4), torch.float64, device, seed=1, soft=True)
    for alpha, gamma in [(0.25, 2.0), (-1.0, 0.5), (0.7, 1.3)]:
        ours = _value_and_grad(sigmoid_focal_loss, x, t, alpha, gamma, reduction)
        theirs = _value_and_grad(torchvision.ops.sigmoid_focal_loss, x, t, alpha, gamma, reduction)
        assert_trees_close(ours, theirs, FOCAL_TOLERANCES[torch.float64], f"{alpha=} {gamma=}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_class_id_form_equals_dense_one_hot(reduction, dtype, device, positives_path):
    gen = torch.Generator().manual_seed(3)
    x, _ = _inputs((3, 41, 6), dtype, device, seed=3)
    ids = torch.randint(-1, 6, (3, 41), generator=gen).to(device)  # -1: background
    one_hot = torch.zeros_like(x)
    rows = ids >= 0
    one_hot[rows, ids[rows]] = 1.0
    for alpha, gamma in [(0.25, 2.0), (-1.0, 0.0), (1.0, 0.5)]:
        ours = _value_and_grad(sigmoid_focal_loss_from_class_ids, x, ids, alpha, gamma, reduction)
        theirs = _value_and_grad(
            torchvision.ops.sigmoid_focal_loss, x, one_hot, alpha, gamma, reduction
        )
        assert_trees_close(ours, theirs, FOCAL_TOLERANCES[dtype], f"{alpha=} {gamma=}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_float64(reduction):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    hard = (torch.rand(2, 3, 4, generator=gen) < 0.4).double()
    soft = torch.rand(2, 3, 4, generator=gen, dtype=torch.float64)
    ids = torch.randint(-1, 4, (2, 3), generator=gen)
    for alpha, gamma in [(0.25, 2.0), (-1.0, 0.5), (1.0, 0.0), (0.4, 1.7)]:
        for t in (hard, soft):
            assert torch.autograd.gradcheck(
                lambda v, t=t, a=alpha, g=gamma: sigmoid_focal_loss(v, t, a, g, reduction), (x,)
            )
        assert torch.autograd.gradcheck(
            lambda v, a=alpha, g=gamma: sigmoid_focal_loss_from_class_ids(v, ids, a, g, reduction),
            (x,),
        )


@pytest.mark.parametrize("sparse", [True, False])
def test_class_id_positives_are_sparse_on_cpu_only_when_switched_on(sparse, monkeypatch):
    monkeypatch.setattr(losses, "_SPARSE_POSITIVES_ON_CPU", sparse)
    x = torch.randn(6, 4)
    ids = torch.tensor([-1, 0, 3, 4, -5, 2])  # 4 and -5: background rows
    positives = losses._PositiveRows(x, ids, 0.25, 2.0, torch.float32, want_grad=True)
    assert positives.sparse is sparse
    if sparse:  # flat indices of (1, 0), (2, 3) and (5, 2) in the [6, 4] logits
        assert positives.flat.tolist() == [4, 11, 22]
    dense_loss = sigmoid_focal_loss_from_class_ids(x, ids, reduction="none")
    one_hot = torch.zeros(6, 4)
    one_hot[[1, 2, 5], [0, 3, 2]] = 1.0
    expected = torchvision.ops.sigmoid_focal_loss(x, one_hot, reduction="none")
    torch.testing.assert_close(dense_loss, expected, rtol=1e-6, atol=1e-7)


def test_second_backward_recomputes_the_same_gradient():
    x, t = _inputs((5, 9), torch.float32, "cpu")
    leaf = x.requires_grad_()
    loss = sigmoid_focal_loss(leaf, t, reduction="mean")
    (first,) = torch.autograd.grad(loss, leaf, retain_graph=True)
    (second,) = torch.autograd.grad(loss, leaf)
    assert torch.equal(first, second)
    assert first.abs().sum() > 0


@pytest.mark.parametrize("with_another_term", [False, True])
def test_no_second_derivative(with_another_term):
    # The closed-form gradient carries no graph: a backward with create_graph=True raises,
    # also where the focal loss is one term of a sum (once_differentiable let that
    # through: the Hessian of focal + (x**3).sum() came out without the focal term).
    x, t = _inputs((3, 4), torch.float64, "cpu")
    leaf = x.requires_grad_()
    loss = sigmoid_focal_loss(leaf, t, reduction="sum")
    if with_another_term:
        loss = loss + (leaf**3).sum()
    with pytest.raises(RuntimeError, match="sigmoid_focal_loss: its backward gives first "):
        torch.autograd.grad(loss, leaf, create_graph=True)
    (grad,) = torch.autograd.grad(loss, leaf)  # first derivatives still work
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.5, 2.0, 3.5])
def test_finite_at_saturated_logits(dtype, gamma, device):
    # Every finite logit up to |x| = 1e4, both targets, every gamma >= 0 (0 < gamma < 1
    # included). The expected values are the reference's on the same (rounded) inputs.
    x = torch.tensor([1e4, -1e4, 100.0, -100.0, 30.0, -30.0, 9.39, -9.39, 0.0], dtype=dtype)
    x = torch.cat([x, x])
    t = torch.cat([torch.ones(9), torch.zeros(9)]).to(dtype)
    loss = sigmoid_focal_loss(x.to(device), t.to(device), 0.25, gamma)
    grad = sigmoid_focal_loss_grad(x.to(device), t.to(device), 0.25, gamma)
    assert loss.dtype == grad.dtype == dtype
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    x64, t64 = x.double().numpy(), t.double().numpy()
    expected = (ref.sigmoid_focal_loss(x64, t64, 0.25, gamma),
                ref.sigmoid_focal_loss_grad(x64, t64, 0.25, gamma))  # fmt: skip
    assert_trees_close((loss, grad), expected, FOCAL_TOLERANCES[dtype], f"{dtype} {gamma=}")


def test_torchvision_gradient_nan_for_gamma_below_one_is_fixed():
    # Known peer bug: d/dx (1 - p_t)**gamma = gamma (1 - p_t)**(gamma - 1) * ... is
    # 0 * inf = NaN once 1 - p_t rounds to 0 (t = 1, x = 20 in float32, gamma = 0.5).
    x = torch.tensor([20.0, -20.0])
    t = torch.tensor([1.0, 0.0])
    leaf = x.clone().requires_grad_()
    torchvision.ops.sigmoid_focal_loss(leaf, t, gamma=0.5).sum().backward()
    assert torch.isnan(leaf.grad).all()  # the peer fails here ...
    ours = sigmoid_focal_loss_grad(x, t, gamma=0.5)
    # ... the true gradient is -a (1-p)**gamma ((1-p) + gamma ce p) ~ -0.25 e^{-10} < 1e-5.
    assert torch.isfinite(ours).all()
    assert ours[0] < 0 < ours[1] and ours.abs().max() < 1e-5


def test_fp16_logit_9_39_is_finite():
    # mmcv's fp16 kernel returns NaN at logit 9.39; detops computes half inputs in float32.
    x = torch.tensor([9.39, -9.39, 9.39, -9.39], dtype=torch.float16)
    t = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float16)
    loss = sigmoid_focal_loss(x, t)
    grad = sigmoid_focal_loss_grad(x, t)
    assert loss.dtype == torch.float16 and torch.isfinite(loss).all()
    assert torch.isfinite(grad).all()
    expected = ref.sigmoid_focal_loss(x.double().numpy(), t.double().numpy())
    assert_trees_close(loss, expected, FOCAL_TOLERANCES[torch.float16])


def test_mean_over_empty_input_is_zero_with_a_gradient_path(device):
    x = torch.zeros(0, 3, device=device, requires_grad=True)
    t = torch.zeros(0, 3, device=device)
    assert torch.isnan(torchvision.ops.sigmoid_focal_loss(x, t, reduction="mean"))  # peer
    loss = sigmoid_focal_loss(x, t, reduction="mean")
    assert loss.shape == () and loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert x.grad is not None and x.grad.shape == (0, 3)
    assert sigmoid_focal_loss(x, t, reduction="sum").item() == 0.0
    assert sigmoid_focal_loss(x, t).shape == (0, 3)
    empty_ids = torch.zeros(0, dtype=torch.long, device=device)
    assert sigmoid_focal_loss_from_class_ids(x, empty_ids, reduction="mean").item() == 0.0


def test_hand_computed_values():
    # x = 0: p = 1/2, ce = log 2, 1 - p_t = 1/2. With alpha = 0.25, gamma = 2:
    # t = 1: 0.25 * log 2 / 4; t = 0: 0.75 * log 2 / 4. Gradient at t = 1:
    # a q^g ((p - t) + g ce r (1 - 2t)) = 0.25/4 * (-1/2 - 2 log 2 * 1/2) = -(1 + 2 log 2)/32.
    x = torch.zeros(2, dtype=torch.float64)
    t = torch.tensor([1.0, 0.0], dtype=torch.float64)
    loss = sigmoid_focal_loss(x, t)
    grad = sigmoid_focal_loss_grad(x, t)
    expected_loss = [0.25 * math.log(2) / 4, 0.75 * math.log(2) / 4]
    expected_grad = [-(1 + 2 * math.log(2)) / 32, 3 * (1 + 2 * math.log(2)) / 32]
    np.testing.assert_allclose(loss.numpy(), expected_loss, rtol=1e-15)
    np.testing.assert_allclose(grad.numpy(), expected_grad, rtol=1e-15)


def test_large_input_crosses_chunks(device, positives_path):
    # At least 16 CPU chunks, a row-aligned class-id chunking and a last, shorter chunk.
    shape = (16 * losses._CHUNK // 128 + 3, 128)
    x, t = _inputs(shape, torch.float32, device, seed=5)
    ids = torch.randint(-1, 128, shape[:1], generator=torch.Generator().manual_seed(5))
    one_hot = torch.zeros(shape)
    one_hot[ids >= 0, ids[ids >= 0]] = 1.0
    ids, one_hot = ids.to(device), one_hot.to(device)
    for reduction in REDUCTIONS:
        ours = _value_and_grad(sigmoid_focal_loss, x, t, 0.25, 2.0, reduction)
        theirs = _value_and_grad(torchvision.ops.sigmoid_focal_loss, x, t, 0.25, 2.0, reduction)
        assert_trees_close(ours, theirs, FOCAL_TOLERANCES[torch.float32], reduction)
        ours = _value_and_grad(sigmoid_focal_loss_from_class_ids, x, ids, 0.25, 2.0, reduction)
        theirs = _value_and_grad(
            torchvision.ops.sigmoid_focal_loss, x, one_hot, 0.25, 2.0, reduction
        )
        assert_trees_close(ours, theirs, FOCAL_TOLERANCES[torch.float32], f"ids {reduction}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "values, binary",
    [
        ([0.0, 1.0, 1.0, 0.0], True),
        ([0.0, 0.0], True),
        ([-0.0, 1.0], True),  # -0.0 is 0: the same loss either way
        ([0.0, 0.5], False),
        ([1e-30, 1.0], False),  # t * t underflows; t - t * t does not
        ([0.0, 1.0 - 2.0**-24], False),
        ([0.0, 1.0 + 2.0**-20], False),
        ([1e20, 0.0], False),  # t * t overflows to inf
        ([float("nan"), 0.0], False),
        ([float("inf"), 1.0], False),
        ([-1.0, 0.0], False),
    ],
)
def test_binary_target_check(values, binary, dtype):
    t = torch.tensor(values, dtype=dtype)
    buffers = losses._Buffers(t.numel(), dtype, t.device, 0.25, 2.0)
    assert losses._binary_targets(t, buffers) is binary


def test_each_chunk_takes_the_path_its_targets_allow(monkeypatch):
    # Three chunks: 0/1 targets, one soft target, 0/1 targets. The 0/1 chunks take the
    # binary form, the other the general one, and all of it meets the reference.
    calls = []
    for name in ("_binary_chunk", "_dense_chunk"):
        real = getattr(losses, name)
        monkeypatch.setattr(
            losses, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a)
        )
    n = 3 * losses._CHUNK - 5
    x, t = _inputs((n,), torch.float64, "cpu", seed=11, scale=6.0)
    t[losses._CHUNK + 17] = 0.25
    for reduction in REDUCTIONS:
        calls.clear()
        loss, grad = _value_and_grad(sigmoid_focal_loss, x, t, 0.25, 2.0, reduction)
        assert calls == ["_binary_chunk", "_dense_chunk", "_binary_chunk"]
        weight = torch.rand(
            loss.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64
        )
        expected_loss = ref.sigmoid_focal_loss(x.numpy(), t.numpy(), 0.25, 2.0, reduction)
        expected_grad = ref.sigmoid_focal_loss_grad(x.numpy(), t.numpy(), 0.25, 2.0, "none")
        if reduction == "mean":
            expected_grad = expected_grad / n
        expected_grad = expected_grad * weight.numpy()
        assert_trees_close(
            (loss, grad),
            (torch.as_tensor(expected_loss), torch.as_tensor(expected_grad)),
            FOCAL_TOLERANCES[torch.float64],
            reduction,
        )


def test_inputs_are_not_modified_and_layout_is_free():
    x, t = _inputs((6, 5), torch.float32, "cpu")
    xt, tt = x.t(), t.t()  # non-contiguous
    before = (xt.clone(), tt.clone())
    loss = sigmoid_focal_loss(xt, tt)
    assert torch.equal(xt, before[0]) and torch.equal(tt, before[1])
    assert torch.equal(loss, sigmoid_focal_loss(xt.contiguous(), tt.contiguous()))


def test_no_grad_forward_and_mixed_target_dtype():
    x, t = _inputs((4, 7), torch.float32, "cpu")
    with torch.no_grad():
        plain = sigmoid_focal_loss(x.requires_grad_(), t)
    assert not plain.requires_grad
    mixed = sigmoid_focal_loss(x.detach(), t.double())
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)


def test_peak_memory_below_three_times_the_input():
    # Forward + backward in a fresh process; resident-set peak above the inputs.
    code = (
        "import resource, torch\n"
        "from detops.losses import sigmoid_focal_loss\n"
        "x = torch.randn(16, 8192, 8).mul_(3).requires_grad_()\n"
        "t = (torch.rand(16, 8192, 8) < 0.01).float()\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "loss = sigmoid_focal_loss(x, t, reduction='none')\n"
        "loss.sum().backward()\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((peak - base) * 1024 / (x.numel() * 4))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)  # fmt: skip
    ratio = float(result.stdout.strip())
    # 'none' keeps the loss (1x) and the gradient (1x); torchvision peaks near 10x.
    assert ratio < 3.0, f"peak extra memory {ratio:.2f}x the input size"


ERROR_INPUTS = [
    # (callable, args, kwargs, exception, message regex)
    (sigmoid_focal_loss, ([1.0], torch.zeros(1)), {}, TypeError,
     r"sigmoid_focal_loss: inputs must be a torch.Tensor, got list"),
    (sigmoid_focal_loss, (torch.zeros(2, dtype=torch.long), torch.zeros(2)), {}, TypeError,
     r"sigmoid_focal_loss: inputs must have a floating dtype.*got torch.int64"),
    (sigmoid_focal_loss, (torch.zeros(2), torch.zeros(2, dtype=torch.long)), {}, TypeError,
     r"sigmoid_focal_loss: targets must have a floating dtype.*got torch.int64"),
    (sigmoid_focal_loss, (torch.zeros(2, 3), torch.zeros(3, 2)), {}, ValueError,
     r"sigmoid_focal_loss: targets must have the shape of inputs \[2, 3\], got \[3, 2\]"),
    (sigmoid_focal_loss, (torch.zeros(2), torch.zeros(2)), {"alpha": 1.5}, ValueError,
     r"alpha must lie in \[0, 1\] or be -1.*got 1.5"),
    (sigmoid_focal_loss, (torch.zeros(2), torch.zeros(2)), {"alpha": -0.5}, ValueError,
     r"alpha must lie in \[0, 1\] or be -1.*got -0.5"),
    (sigmoid_focal_loss, (torch.zeros(2), torch.zeros(2)), {"alpha": "a"}, TypeError,
     r"alpha must be a number, got str"),
    (sigmoid_focal_loss, (torch.zeros(2), torch.zeros(2)), {"gamma": torch.ones(2)}, TypeError,
     r"gamma must be a number, got a torch.float32 tensor of shape \[2\]"),
    (sigmoid_focal_loss, (torch.zeros(2), torch.zeros(2)),
     {"alpha": torch.tensor(0.25, requires_grad=True)}, ValueError,
     r"alpha is a tensor that requires grad; its value is read as a number"),
    (sigmoid_focal_loss, (torch.zeros(2), torch.zeros(2)), {"gamma": -1.0}, ValueError,
     r"gamma must be a finite number >= 0, got -1.0"),
    (sigmoid_focal_loss, (torch.zeros(2), torch.zeros(2)), {"gamma": math.inf}, ValueError,
     r"gamma must be a finite number >= 0, got inf"),
    (sigmoid_focal_loss, (torch.zeros(2), torch.zeros(2)), {"reduction": "avg"}, ValueError,
     r"reduction must be one of 'none', 'mean', 'sum', got 'avg'"),
    (sigmoid_focal_loss, (torch.zeros(2), torch.zeros(2, requires_grad=True)), {}, ValueError,
     r"targets must not require grad.*detach"),
    (sigmoid_focal_loss_from_class_ids, (torch.zeros(2, 3), torch.zeros(2)), {}, TypeError,
     r"sigmoid_focal_loss_from_class_ids: class_ids must have an integer dtype, got torch.float"),
    (sigmoid_focal_loss_from_class_ids, (torch.zeros(2, 3), torch.zeros(3, dtype=torch.long)),
     {}, ValueError, r"class_ids must have shape inputs.shape\[:-1\] = \[2\], got \[3\]"),
    (sigmoid_focal_loss_from_class_ids, (torch.zeros(()), torch.zeros((), dtype=torch.long)),
     {}, ValueError, r"inputs must have shape \[..., C\], got \[\]"),
    (sigmoid_focal_loss_from_class_ids, (torch.zeros(2, 3), torch.zeros(2, dtype=torch.bool)),
     {}, TypeError, r"class_ids must have an integer dtype, got torch.bool"),
    (sigmoid_focal_loss_grad, (torch.zeros(2), torch.zeros(2)), {"reduction": "x"}, ValueError,
     r"sigmoid_focal_loss_grad: reduction must be one of"),
]  # fmt: skip


def test_alpha_and_gamma_as_numpy_scalars_and_tensors_as_torchvision_takes_them():
    x = torch.randn(3, 5, dtype=torch.float64)
    t = (torch.rand(3, 5) < 0.3).double()
    plain = sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, reduction="sum")
    expected = ref.sigmoid_focal_loss(x.numpy(), t.numpy(), 0.25, 2.0, reduction="sum")
    torch.testing.assert_close(plain, torch.tensor(float(expected), dtype=torch.float64))
    for alpha, gamma in (
        (np.float32(0.25), np.int64(2)),
        (torch.tensor(0.25), torch.tensor(2)),
        (torch.tensor([0.25]), np.float64(2.0)),
    ):
        assert torch.equal(sigmoid_focal_loss(x, t, alpha, gamma, reduction="sum"), plain)
    with pytest.raises(TypeError, match=r"alpha must be a number, got numpy.bool"):
        sigmoid_focal_loss(x, t, alpha=np.bool_(True))


@pytest.mark.parametrize(("fn", "args", "kwargs", "error", "match"), ERROR_INPUTS)
def test_error_inputs(fn, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_error_devices():
    with pytest.raises(ValueError, match=r"sigmoid_focal_loss: all tensors must be on one device"):
        sigmoid_focal_loss(torch.zeros(2), torch.zeros(2, device="cuda"))
    with pytest.raises(ValueError, match=r"from_class_ids: all tensors must be on one device"):
        sigmoid_focal_loss_from_class_ids(
            torch.zeros(2, 3), torch.zeros(2, dtype=torch.long, device="cuda")
        )


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_meta_tensors_give_the_shapes_and_dtypes_of_the_cpu_call(reduction, dtype):
    # Meta tensors hold no values: the ops answer with the output's shape and dtype (and a
    # gradient of the inputs' shape), as torch's own ops do, for shape inference.
    x, t = _inputs((2, 5, 3), dtype, "cpu")
    ids = torch.tensor([[0, 2, -1, 1, 0], [2, 2, 1, -1, 0]])
    calls = [
        lambda x, t, ids: sigmoid_focal_loss(x, t, reduction=reduction),
        lambda x, t, ids: sigmoid_focal_loss_grad(x, t, reduction=reduction),
        lambda x, t, ids: sigmoid_focal_loss_from_class_ids(x, ids, reduction=reduction),
    ]
    for call in calls:
        on_cpu = call(x, t, ids)
        leaf = x.to("meta").requires_grad_()
        on_meta = call(leaf, t.to("meta"), ids.to("meta"))
        assert on_meta.device.type == "meta"
        assert (on_meta.shape, on_meta.dtype) == (on_cpu.shape, on_cpu.dtype)
        if on_meta.requires_grad:
            on_meta.sum().backward()
            assert leaf.grad.device.type == "meta" and leaf.grad.shape == x.shape


# --- softplus on CPU in NumPy ------------------------------------------------------------


@contextlib.contextmanager
def warnings_as_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [None, "dtype"])
def test_numpy_softplus_is_torch_softplus_within_a_few_ulps(dtype, threshold):
    """The NumPy softplus (exp, log1p, then z above the threshold; the chunks' route where
    NumPy vectorizes log1p, tested on every machine): torch's value within 4 ulps
    everywhere, the same special values, and no warning from exp's overflow (each call
    sits inside a loss that must stay silent)."""
    limit = None if threshold is None else losses._softplus_threshold(dtype)
    finite = torch.cat(
        [
            torch.linspace(-120, 0 if limit is None else 120, 20001, dtype=dtype),
            -torch.logspace(-40, 2, 500, dtype=dtype),
            torch.tensor([0.0, -0.0, -1e-45, -3e38], dtype=dtype),
        ]
    )
    if limit is not None:
        near = torch.tensor(limit, dtype=dtype)
        around = torch.stack([near.nextafter(near - 1), near, near.nextafter(near + 1)])
        finite = torch.cat([finite, around, torch.logspace(-40, 38, 500, dtype=dtype)])
    out = torch.empty_like(finite)
    with warnings_as_errors():
        losses._numpy_softplus_into(finite, out, limit)
    expected = torch.nn.functional.softplus(finite, threshold=20 if limit is None else limit)
    ulp = torch.finfo(dtype).eps * expected.abs().clamp_min(torch.finfo(dtype).tiny)
    # (below the smallest normal, within 4 of its ulps: NumPy rounds exp(-103.97) up to
    # the smallest subnormal float32 where torch gives 0)
    assert ((out - expected).abs() <= 4 * ulp).all()
    assert (out >= 0).all()
    values = [math.nan, -math.inf] + ([] if limit is None else [math.inf])
    special = torch.tensor(values, dtype=dtype).repeat(losses._NUMPY_SOFTPLUS_MIN)
    out = torch.empty_like(special)
    with warnings_as_errors():
        losses._numpy_softplus_into(special, out, limit)
    expected = torch.nn.functional.softplus(special, threshold=20 if limit is None else limit)
    assert torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out.nan_to_num(), expected.nan_to_num())


@pytest.mark.parametrize("numpy_is_fast", [True, False])
def test_class_id_focal_loss_takes_negated_views_on_both_softplus_routes(
    monkeypatch, numpy_is_fast
):
    # (the NumPy route viewed the logits with .numpy(), which refuses a lazy negation)
    monkeypatch.setattr(losses, "_NUMPY_SOFTPLUS", numpy_is_fast)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 80, generator=gen) * 3
    ids = torch.randint(-1, 80, (100,), generator=gen)
    ours = losses.sigmoid_focal_loss_from_class_ids(torch._neg_view(-x), ids, reduction="none")
    expected = ref.sigmoid_focal_loss_from_class_ids(
        x.double().numpy(), ids.numpy(), reduction="none"
    )
    torch.testing.assert_close(ours, torch.from_numpy(expected).float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("numpy_is_fast", [True, False])
def test_softplus_route_follows_numpys_vectorized_log1p(monkeypatch, numpy_is_fast):
    """Large CPU inputs take NumPy only where it vectorizes log1p; otherwise, and for
    small inputs and meta tensors, torch's softplus, whose values the route then gives
    exactly."""
    monkeypatch.setattr(losses, "_NUMPY_SOFTPLUS", numpy_is_fast)
    called = []
    real_log1p = np.log1p
    monkeypatch.setattr(losses.np, "log1p", lambda *a, **k: called.append(1) or real_log1p(*a, **k))
    size = losses._NUMPY_SOFTPLUS_MIN
    z = torch.empty(size, device="meta")
    out = torch.empty(size, device="meta")
    losses._softplus_into(z, out, 20.0)
    assert out.device.type == "meta" and out.shape == (size,)
    small = torch.linspace(-5, 5, size - 1)
    out = torch.empty_like(small)
    losses._softplus_into(small, out, 20.0)
    assert not called
    assert torch.equal(out, torch.nn.functional.softplus(small))
    large = torch.linspace(-30, 30, size)
    out = torch.empty_like(large)
    losses._softplus_into(large, out, 20.0)
    assert bool(called) is numpy_is_fast
    if not numpy_is_fast:
        assert torch.equal(out, torch.nn.functional.softplus(large))
    exact = torch.nn.functional.softplus(large.double()).float()
    torch.testing.assert_close(out, exact, rtol=4 * torch.finfo().eps, atol=0)


@pytest.mark.parametrize(
    ("features", "expected"),
    [({"AVX2": True, "AVX512_SKX": True}, True), ({"AVX2": True, "AVX512_SKX": False}, False)],
)
def test_numpy_log1p_is_fast_only_with_avx512_skx(monkeypatch, features, expected):
    try:
        from numpy._core import _multiarray_umath
    except ImportError:  # NumPy 1
        from numpy.core import _multiarray_umath

    monkeypatch.setattr(_multiarray_umath, "__cpu_features__", features)
    assert losses._numpy_has_fast_log1p() is expected


def _many_positives():
    """40,003 rows of 3 classes, every row positive: more positive entries than a chunk
    (an odd count: split across threads, the halves end between vector lanes)."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(40003, 3, generator=gen, dtype=torch.float32) * 4
    ids = torch.randint(0, 3, (40003,), generator=gen)
    return x, ids


def _class_id_loss_and_grad(x, ids, reduction):
    leaf = x.clone().requires_grad_()
    loss = losses.sigmoid_focal_loss_from_class_ids(leaf, ids, reduction=reduction)
    loss.sum().backward()
    return loss.detach(), leaf.grad


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_class_ids_with_more_positives_than_a_chunk_meet_torchvision(reduction):
    x, ids = _many_positives()
    ours = _class_id_loss_and_grad(x, ids, reduction)
    leaf = x.double().requires_grad_()
    one_hot = torch.nn.functional.one_hot(ids, 3).double()
    expected = torchvision.ops.sigmoid_focal_loss(leaf, one_hot, reduction=reduction)
    expected.sum().backward()
    for got, want in zip(ours, (expected.detach(), leaf.grad), strict=True):
        torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_class_ids_with_more_positives_than_a_chunk_do_not_depend_on_threads(reduction):
    """Found by a new-user trial: above one chunk of positives their terms ran as single
    torch ops, which split across torch's threads; the split moved elements between the
    vectorized loop and its scalar tail, and the last bit changed with the thread count
    (loss 7e-9, gradient 2e-8 apart). In chunks, every thread count gives the same bits."""
    x, ids = _many_positives()
    default = _class_id_loss_and_grad(x, ids, reduction)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _class_id_loss_and_grad(x, ids, reduction)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(default, single, strict=True):
        assert torch.equal(a, b)
