"""Every ```python block of README.md runs as written (a fresh namespace per block)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[int, str]]:
    """``(line number, code)`` of every ```python block."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def test_the_readme_has_the_batched_loss_and_inference_examples():
    code = "\n".join(block for _, block in python_blocks())
    assert "fcos_loss(" in code and "fcos_inference(" in code


@pytest.mark.parametrize(
    "line, code", python_blocks(), ids=[f"README.md:{n}" for n, _ in python_blocks()]
)
def test_readme_block_runs(line, code, capsys, monkeypatch):
    import torch

    monkeypatch.chdir(README.parent)  # the examples name files of the checkout

    state = torch.get_rng_state()  # the examples draw random predictions: restore after
    torch.manual_seed(0)
    try:
        exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "readme_example"})
    finally:
        torch.set_rng_state(state)
