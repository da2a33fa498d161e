"""What ``detect`` and ``evaluate`` share: the checks of their arguments that need no torch,
and the model a train checkpoint holds."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from detops.cli import CommandError


def check_thresholds(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Each ``args.<name>`` must lie in [0, 1]; the message names its option."""
    for name in names:
        value = getattr(args, name)
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise CommandError(f"--{name.replace('_', '-')} must lie in [0, 1], got {value}")


def check_checkpoint_file(path: str) -> None:
    if not Path(path).is_file():
        raise CommandError(
            f"--checkpoint {path}: no such file (train writes "
            "runs/train/checkpoint.pt: python -m detops train)"
        )


def check_output_dir(path: str) -> None:
    output = Path(path)
    if output.exists() and not output.is_dir():
        raise CommandError(f"--output-dir {path} exists and is not a folder")


def load_trained_model(path: str):
    """(model config and weights loaded, extra) from a train checkpoint; usage errors for a
    file that is not one."""
    from detops.nn import FCOS
    from detops.training import load_checkpoint

    not_ours = f"--checkpoint {path} is not a checkpoint written by `python -m detops train`"
    try:
        state = load_checkpoint(path, map_location="cpu")
    except Exception as error:
        raise CommandError(f"{not_ours} ({type(error).__name__} while reading it)") from error
    extra = state.get("extra") or {}
    if "model" not in extra or "image_size" not in extra:
        raise CommandError(f"{not_ours} (it has no model config)")
    model = FCOS(**extra["model"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CommandError(f"{not_ours} (its weights do not fit its model config)") from error
    return model, extra
