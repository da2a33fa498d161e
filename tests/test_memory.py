"""detops._memory: large CPU outputs advised to use huge pages, only inside their own
memory, and only a hint.

The span arithmetic is checked against hand-worked cases; the advice itself against
what Linux reports for the mapping (``VmFlags: hg`` in /proc/self/smaps).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import detops
from detops import _memory

MiB = 1 << 20


@pytest.mark.parametrize(
    ("address", "size", "expected"),
    [
        (0, 4 * MiB, (0, 4 * MiB)),  # aligned at both ends
        (3 * MiB + 5, 10 * MiB, (4 * MiB, 8 * MiB)),  # 4 MiB .. 12 MiB (13 MiB + 5 floors to 12)
        (2 * MiB - 1, 2 * MiB, (2 * MiB, 0)),  # ends 1 byte short of 4 MiB: no whole page
        (1, MiB, (2 * MiB, 0)),  # smaller than a page
        (6 * MiB, 2 * MiB, (6 * MiB, 2 * MiB)),  # exactly one page
    ],
)
def test_huge_page_span(address, size, expected):
    assert _memory.huge_page_span(address, size) == expected


class _Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, start, length, advice):
        self.calls.append((start, length, advice))
        return -1  # a refusal must change nothing


@pytest.fixture
def recorder(monkeypatch):
    recorder = _Recorder()
    monkeypatch.setattr(_memory, "_madvise", lambda: recorder)
    return recorder


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_cpu_output_is_advised_inside_its_own_memory(recorder, dtype):
    size = _memory.ADVISED_MIN_BYTES // torch.empty((), dtype=dtype).element_size() + 3
    out = _memory.empty_output(size, dtype, torch.device("cpu"))
    assert out.shape == (size,) and out.dtype == dtype and out.is_contiguous()
    ((start, length, advice),) = recorder.calls
    first, end = out.data_ptr(), out.data_ptr() + out.numel() * out.element_size()
    assert first <= start and start + length <= end
    assert start % _memory.HUGE_PAGE_BYTES == 0 and length % _memory.HUGE_PAGE_BYTES == 0
    assert length >= _memory.ADVISED_MIN_BYTES - 2 * _memory.HUGE_PAGE_BYTES
    assert advice == 14  # MADV_HUGEPAGE


def test_small_output_is_not_advised(recorder):
    size = _memory.ADVISED_MIN_BYTES // 4 - 1
    out = _memory.empty_output(size, torch.float32, torch.device("cpu"))
    assert out.shape == (size,)
    assert recorder.calls == []


def test_without_madvise_the_output_is_plain(monkeypatch):
    monkeypatch.setattr(_memory, "_madvise", lambda: None)
    out = _memory.empty_output(_memory.ADVISED_MIN_BYTES // 4, torch.float32, torch.device("cpu"))
    assert out.numel() == _memory.ADVISED_MIN_BYTES // 4


def _thp_mode() -> str | None:
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not sys.platform.startswith("linux") or not path.exists():
        return None
    return path.read_text().split("[")[1].split("]")[0]


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping that holds ``address`` (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=1)[0] if line else ""
        if "-" in head and not head.endswith(":"):
            low, high = (int(value, 16) for value in head.split("-"))
            inside = low <= address < high
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(
    _thp_mode() not in ("always", "madvise"), reason="needs Linux with transparent huge pages"
)
def test_linux_records_the_advice_on_the_output_only():
    out = _memory.empty_output(_memory.ADVISED_MIN_BYTES // 4, torch.float32, torch.device("cpu"))
    start, length = _memory.huge_page_span(out.data_ptr(), out.numel() * 4)
    assert "hg" in _vm_flags(start) and "hg" in _vm_flags(start + length - 1)
    plain = torch.empty(_memory.ADVISED_MIN_BYTES // 4)
    assert "hg" not in _vm_flags(plain.data_ptr() + plain.numel() * 2)


@pytest.mark.skipif(
    _thp_mode() not in ("always", "madvise"), reason="needs Linux with transparent huge pages"
)
def test_focal_gradient_of_a_large_input_uses_the_advised_buffer():
    g = torch.Generator().manual_seed(0)
    rows = _memory.ADVISED_MIN_BYTES // 4 // 80 + 1
    logits = torch.randn(rows, 80, generator=g).requires_grad_()
    targets = (torch.rand(rows, 80, generator=g) < 0.01).float()
    (grad,) = torch.autograd.grad(
        detops.sigmoid_focal_loss(logits, targets, reduction="sum"), logits
    )
    assert grad.shape == logits.shape
    assert "hg" in _vm_flags(grad.data_ptr() + grad.numel() * 2)
