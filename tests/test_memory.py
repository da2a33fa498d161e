"""detops._memory.populate_pages: advice that maps a large output's pages in one call."""

from __future__ import annotations

import sys

import pytest
import torch
import torchvision

import detops._memory as memory
from detops import losses

BIG = memory.POPULATE_MIN_BYTES // 4 + 1000  # float32 elements just above the threshold


def _recorder(monkeypatch, result=0):
    calls = []

    def madvise(start, length, advice):
        calls.append((start, length, advice))
        return result

    monkeypatch.setattr(memory, "_madvise", madvise)
    return calls


def test_advises_whole_pages_inside_the_tensor(monkeypatch):
    calls = _recorder(monkeypatch)
    values = torch.empty(BIG)
    memory.populate_pages(values)
    ((start, length, advice),) = calls
    address, size = values.data_ptr(), values.numel() * values.element_size()
    assert advice == 23  # MADV_POPULATE_WRITE
    assert start % memory._PAGE == 0 and length % memory._PAGE == 0
    assert address <= start < start + length <= address + size
    assert start - address < memory._PAGE and address + size - (start + length) < memory._PAGE


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.empty(memory.POPULATE_MIN_BYTES // 4 - 1),  # under the threshold
        lambda: torch.empty(BIG, 2)[:, 0],  # not contiguous
        lambda: torch.empty(BIG, device="meta"),  # no memory
    ],
    ids=["small", "strided", "meta"],
)
def test_leaves_other_tensors_alone(monkeypatch, make):
    calls = _recorder(monkeypatch)
    memory.populate_pages(make())
    assert calls == []


def test_a_refused_call_is_silent(monkeypatch):
    calls = _recorder(monkeypatch, result=-1)  # (an older kernel: EINVAL)
    values = torch.empty(BIG)
    memory.populate_pages(values)
    assert len(calls) == 1
    values.fill_(2.0)
    assert bool((values == 2.0).all())


@pytest.mark.skipif(memory._madvise is None, reason="madvise through ctypes needs Linux")
def test_the_real_call_keeps_every_value():
    values = torch.arange(BIG, dtype=torch.float32)
    memory.populate_pages(values)  # pages already written: the advice must not touch them
    assert torch.equal(values, torch.arange(BIG, dtype=torch.float32))
    fresh = torch.empty(BIG)
    memory.populate_pages(fresh)
    fresh.copy_(values)
    assert torch.equal(fresh, values)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_loaded_on_linux():
    assert memory._madvise is not None


@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize("form", ["targets", "class_ids"])
def test_focal_loss_outputs_do_not_depend_on_the_advice(monkeypatch, reduction, form):
    """Above the threshold the focal loss advises its loss and gradient buffers; the
    values are those of a run without the advice, bit for bit, and torchvision's (run in
    float64: at this size the NumPy reference's per-element loop takes minutes)."""
    gen = torch.Generator().manual_seed(0)
    rows, classes = BIG // 20 + 1, 20
    x = torch.randn(rows, classes, generator=gen) * 3
    ids = torch.randint(-1, classes, (rows,), generator=gen)
    targets = torch.zeros(rows, classes)
    targets[ids >= 0, ids[ids >= 0]] = 1.0

    def run():
        leaf = x.clone().requires_grad_()
        if form == "targets":
            loss = losses.sigmoid_focal_loss(leaf, targets, reduction=reduction)
        else:
            loss = losses.sigmoid_focal_loss_from_class_ids(leaf, ids, reduction=reduction)
        loss.sum().backward()
        return loss.detach(), leaf.grad

    advised = []
    real = memory.populate_pages
    monkeypatch.setattr(losses, "populate_pages", lambda v: advised.append(v.numel()) or real(v))
    with_advice = run()
    assert advised == ([x.numel()] * (2 if reduction == "none" else 1))
    monkeypatch.setattr(losses, "populate_pages", lambda v: None)
    without = run()
    for ours, plain in zip(with_advice, without, strict=True):
        assert torch.equal(ours, plain)
    leaf = x.double().requires_grad_()
    expected = torchvision.ops.sigmoid_focal_loss(leaf, targets.double(), reduction=reduction)
    expected.sum().backward()
    for ours, theirs in zip(with_advice, (expected.detach(), leaf.grad), strict=True):
        torch.testing.assert_close(ours, theirs.float(), rtol=1e-5, atol=1e-6)
