"""``python -m detops train`` and ``detect`` end to end, on a tiny synthetic set."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from PIL import Image

from detops.cli import build_parser, main
from detops.training import load_checkpoint

pytestmark = pytest.mark.slow

TINY = [
    "--num-train", "4", "--num-val", "2", "--image-size", "64", "--batch-size", "2",
    "--iterations", "2", "--fpn-channels", "8", "--stem-channels", "8",
    "--warmup-iterations", "0", "--checkpoint-every", "1", "--no-progress", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # One torch thread: two OpenMP threads on the shared, oversubscribed 2-core machine run
    # the small convs 10-30x slower. Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    args = ["train", "--data", "synthetic", "--data-dir", str(root / "data")]
    args += ["--output-dir", str(root / "run"), *TINY]
    assert main(args) == 0
    return root, args


def test_train_writes_checkpoint_curve_and_metrics(trained):
    root, _ = trained
    run = root / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["iterations"] == 2 and metrics["resumed_from"] == 0
    assert 0.0 <= metrics["map_50"] <= 1.0
    assert set(metrics["ap_per_class"]) == {"circle", "square", "triangle", "cross"}
    assert (run / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["iteration"] == 2
    assert state["extra"]["model"]["num_classes"] == 4
    assert state["extra"]["class_names"] == ["circle", "square", "triangle", "cross"]
    assert "loss_normalizer" in state["model"]  # the FCOS buffer travels with the weights


def test_train_again_resumes_from_the_checkpoint(trained, capsys):
    root, args = trained
    before = load_checkpoint(root / "run" / "checkpoint.pt")
    assert main(args) == 0
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert metrics["resumed_from"] == 2 and metrics["iterations"] == 2
    after = load_checkpoint(root / "run" / "checkpoint.pt")
    for name, value in before["model"].items():
        assert torch.equal(after["model"][name], value), name


def test_detect_writes_annotated_pngs(trained, tmp_path, capsys):
    root, _ = trained
    # A non-square image larger than the model's input, and a grey one.
    wide = Image.open(root / "data" / "images" / "val_00000.png").resize((96, 64))
    wide.save(tmp_path / "wide.jpg")
    Image.new("RGB", (50, 70), (128, 128, 128)).save(tmp_path / "grey.png")
    out = tmp_path / "out"
    status = main(
        [
            "detect", "--checkpoint", str(root / "run" / "checkpoint.pt"),
            str(tmp_path / "wide.jpg"), str(tmp_path / "grey.png"),
            "--output-dir", str(out), "--score-thresh", "0.0", "--device", "cpu",
        ]
    )  # fmt: skip
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == ["grey.png", "wide.png"]
    # Drawn on the original pictures, at their original sizes.
    assert Image.open(out / "wide.png").size == (96, 64)
    assert Image.open(out / "grey.png").size == (50, 70)
    printed = capsys.readouterr().out
    assert "wide.jpg:" in printed and "grey.png:" in printed


def test_detect_missing_image_is_a_clear_error(trained, tmp_path):
    root, _ = trained
    with pytest.raises(SystemExit, match="no such image file"):
        main(
            ["detect", "--checkpoint", str(root / "run" / "checkpoint.pt"), str(tmp_path / "x.png")]
        )


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError("no subcommands registered")


@pytest.mark.parametrize("command", ["train", "detect"])
def test_help_explains_every_option(command, capsys):
    sub = _subparser(command)
    for action in sub._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in sub._actions:
        for option in action.option_strings:
            assert option in text, option


def test_train_rejects_a_missing_data_folder(tmp_path):
    with pytest.raises(SystemExit, match="--data must be 'synthetic' or a folder"):
        main(["train", "--data", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path), *TINY])
