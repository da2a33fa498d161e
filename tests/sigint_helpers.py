"""Ctrl-C for the tests: a real SIGINT sent to a ``detops`` command while it starts, and
one that lands inside ``torch.save``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).parent.parent


def ctrl_c_while_torch_loads(args: list[str], after: float = 0.0) -> tuple[int, str, str]:
    """Run ``python -m detops ARGS``, send it SIGINT ``after`` seconds after torch's
    libraries appear in its memory map (its arguments are parsed, torch is being
    imported), and return its exit status, stdout and stderr. Linux only (reads
    /proc/PID/maps); run under the ``python_sigint_handler`` fixture, so that the child
    does not inherit SIGINT ignored."""
    process = subprocess.Popen(
        [sys.executable, "-m", "detops", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 60
        while "libtorch" not in Path(f"/proc/{process.pid}/maps").read_text():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.005)
        time.sleep(after)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
        process.wait()
    return process.returncode, out, err


def interrupt_torch_save(monkeypatch, call: int) -> None:
    """Make the ``call``-th ``torch.save`` (counting from 1) stop with KeyboardInterrupt
    after writing part of its file, as a Ctrl-C landing inside it would."""
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(None)
        if len(calls) != call:
            return real(obj, f, *args, **kwargs)
        with open(f, "wb") as handle:  # (detops saves to a path)
            handle.write(b"PK half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save)
