"""``python -m detops train`` and ``detect`` end to end, on a tiny synthetic set."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import stat
import sys

import pytest
import torch
from PIL import Image
from sigint_helpers import interrupt_torch_save

import detops.training
import detops.visualize
from detops.cli import build_parser, main
from detops.training import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

TINY = [
    "--num-train", "4", "--num-val", "2", "--image-size", "64", "--batch-size", "2",
    "--iterations", "2", "--fpn-channels", "8", "--stem-channels", "8",
    "--warmup-iterations", "0", "--checkpoint-every", "1", "--no-progress", "--device", "cpu",
]  # fmt: skip


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
    coco = metrics["coco"]  # COCOeval's 12 numbers beside the VOC mAP@0.5
    assert len(coco) == 12 and all(v == -1.0 or 0.0 <= v <= 1.0 for v in coco.values())
    assert set(metrics["ap_per_class"]) == {"circle", "square", "triangle", "cross"}
    assert (run / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    with Image.open(run / "val_grid.png") as grid:  # two 64 px val images, upscaled
        assert grid.width > 2 * 320 and grid.height > 320
    # The losses printed at the end and in the curve's legend are the ones recorded.
    assert set(metrics["final_losses"]) == {"loss_cls", "loss_box", "loss_ctr", "total"}
    assert set(metrics["last_iteration_losses"]) == set(metrics["final_losses"])
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["iteration"] == 2
    assert state["extra"]["model"]["num_classes"] == 4
    assert state["extra"]["class_names"] == ["circle", "square", "triangle", "cross"]
    assert "loss_normalizer" in state["model"]  # the FCOS buffer travels with the weights


def test_files_are_written_with_the_users_umask(trained):
    root, _ = trained
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("checkpoint.pt", "loss_curve.png", "val_grid.png", "metrics.json"):
        mode = stat.S_IMODE((root / "run" / name).stat().st_mode)
        assert mode == 0o666 & ~mask, (name, oct(mode))


def test_train_again_resumes_from_the_checkpoint(trained, capsys):
    root, args = trained
    before = load_checkpoint(root / "run" / "checkpoint.pt")
    capsys.readouterr()
    assert main(args) == 0
    assert "resuming from iteration 2 of 2" in capsys.readouterr().out
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
    # Drawn on the original pictures, upscaled by a whole factor to a shorter side >= 320.
    assert Image.open(out / "wide.png").size == (96 * 5, 64 * 5)
    assert Image.open(out / "grey.png").size == (50 * 7, 70 * 7)
    printed = capsys.readouterr().out
    assert "wide.jpg:" in printed and "grey.png:" in printed


def test_detect_never_writes_over_an_input_image(trained, tmp_path, capsys):
    root, _ = trained
    source = Image.open(root / "data" / "images" / "val_00000.png")
    (tmp_path / "b").mkdir()
    for name in ("a.png", "a.jpg", "a_1.png", "b/a.png"):
        source.save(tmp_path / name)
    inputs = ["a.png", "a.jpg", "b/a.png", "a_1.png"]  # the output folder is theirs
    before = {name: (tmp_path / name).read_bytes() for name in inputs}
    argv = ["--checkpoint", str(root / "run" / "checkpoint.pt"), "--device", "cpu"]
    assert (
        main(["detect", *argv, "--output-dir", str(tmp_path)] + [str(tmp_path / n) for n in inputs])
        == 0
    )
    assert {name: (tmp_path / name).read_bytes() for name in inputs} == before
    printed = [line.split(" -> ")[1] for line in capsys.readouterr().out.splitlines()]
    assert [os.path.basename(line) for line in printed] == [
        "a_2.png",
        "a_3.png",
        "a_4.png",
        "a_1_1.png",
    ]


def test_detect_names_a_cut_image_and_a_folder_and_counts_what_it_wrote(
    trained, tmp_path, capsys, monkeypatch
):
    """A file cut short passes the header check and fails to decode: one line naming it and
    how many outputs were written (exit 2). A folder is named as one. Ctrl-C says how many
    were written."""
    root, _ = trained
    good = root / "data" / "images" / "val_00000.png"
    whole = tmp_path / "whole.jpg"
    Image.open(good).resize((96, 96)).save(whole, quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[:-200])  # the header is whole: it fails to decode
    out = tmp_path / "out"
    ckpt = str(root / "run" / "checkpoint.pt")
    argv = ["detect", "--checkpoint", ckpt, "--output-dir", str(out), "--device", "cpu"]
    assert main([*argv, str(good), str(cut)]) == 2
    message = one_line_error(capsys, "detect")
    assert message.startswith(f"{cut} is an unreadable image (OSError: ")
    assert message.endswith("; 1 of 2 images written")
    assert sorted(p.name for p in out.iterdir()) == ["val_00000.png"]
    assert main([*argv, str(tmp_path), str(tmp_path / "nowhere.png")]) == 2
    assert one_line_error(capsys, "detect") == (
        f"folder(s), not image files: {tmp_path}; no such image file(s): {tmp_path}/nowhere.png"
    )
    real = detops.visualize.save_detections_png
    calls = []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(detops.visualize, "save_detections_png", interrupt_second)
    assert main([*argv, str(good), str(whole)]) == 130
    assert capsys.readouterr().err.strip() == (
        f"detops detect: interrupted; 1 of 2 images written to {out}"
    )


def one_line_error(capsys, command: str) -> str:
    """The single stderr line of a usage error, without the prefix."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    prefix = f"detops {command}: error: "
    assert err[0].startswith(prefix), err
    assert "Traceback" not in err[0]
    return err[0].removeprefix(prefix)


def test_detect_usage_errors_are_one_line_and_exit_2(trained, tmp_path, capsys, monkeypatch):
    root, _ = trained
    ckpt = str(root / "run" / "checkpoint.pt")
    image = root / "data" / "images" / "val_00000.png"
    text = tmp_path / "notes.png"
    text.write_text("not a picture\n")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    readme = tmp_path / "README.md"
    readme.write_text("# a readme\n")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")

    def loads_nothing(*args, **kwargs):
        raise AssertionError("the checkpoint must not be loaded before the arguments pass")

    cases = [
        (["--checkpoint", str(tmp_path / "nope.pt"), str(image)], r"--checkpoint .*no such file"),
        (["--checkpoint", ckpt, str(tmp_path / "x.png")], r"no such image file\(s\): .*x\.png"),
        (["--checkpoint", ckpt, str(text)], r"notes\.png is not an image"),
        (["--checkpoint", ckpt, str(text), str(image), str(empty)],  # every bad one named
         r"^2 of 3 inputs are not usable: .*notes\.png is not an image PIL can read; "
         r".*empty\.jpg is not an image PIL can read$"),
        (["--checkpoint", ckpt, str(text), str(tmp_path / "gone.png"), str(empty)],  # one run
         r"^no such image file\(s\): .*gone\.png; 2 of 3 inputs are not usable: .*notes\.png "
         r"is not an image PIL can read; .*empty\.jpg is not an image PIL can read$"),
        (["--checkpoint", ckpt, "--score-thresh", "5", str(image)],
         r"--score-thresh must lie in \[0, 1\], got 5"),
        (["--checkpoint", ckpt, "--image-size", "0", str(image)],
         r"--image-size must be at least 64.*got 0"),
        (["--checkpoint", ckpt, "--device", "gpu", str(image)],
         r"--device must be auto, cpu, cuda or cuda:N"),
    ]  # fmt: skip
    with monkeypatch.context() as patch:
        patch.setattr(detops.training, "load_checkpoint", loads_nothing)
        for argv, pattern in cases:
            assert main(["detect", *argv]) == 2, argv
            message = one_line_error(capsys, "detect")
            assert re.search(pattern, message), (argv, message)
    for bad in (readme, tmp_path / "other.pt"):
        assert main(["detect", "--checkpoint", str(bad), str(image)]) == 2
        message = one_line_error(capsys, "detect")
        assert "is not a checkpoint written by `python -m detops train`" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    assert main(["train", "--output-dir", str(tmp_path), *TINY, "--device", "cuda"]) == 2
    assert "CUDA is not available here" in one_line_error(capsys, "train")


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--image-size", "10"], "--image-size must be at least 64 .*got 10"),
        (["--num-train", "0"], "--num-train must be >= 1, got 0"),
        (["--iterations", "0"], "--iterations must be >= 1, got 0"),
        (["--nms-thresh", "2"], r"--nms-thresh must lie in \[0, 1\], got 2.0"),
        (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["--data", ".", "--classes", "cat,dog,cat"], "--classes names cat more than once"),
        (["--classes", "a,b"], "--classes is for --data PATH: the synthetic set's classes"),
    ],
)
def test_train_usage_errors_are_one_line_and_exit_2(argv, pattern, tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["train", "--data-dir", str(data), "--output-dir", str(tmp_path / "run"),
                 *TINY, *argv]) == 2  # fmt: skip
    assert re.search(pattern, one_line_error(capsys, "train"))
    assert not data.exists() and not (tmp_path / "run").exists()  # nothing written


def test_train_rejects_a_missing_data_folder(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path),
                 *TINY]) == 2  # fmt: skip
    assert "--data must be 'synthetic' or a folder" in one_line_error(capsys, "train")


def test_train_rejects_a_data_file_and_a_data_dir_file_in_one_line(tmp_path, capsys):
    afile = tmp_path / "voc07_train.json"
    afile.write_text("[]")
    assert main(["train", "--data", str(afile), "--output-dir", str(tmp_path / "run"),
                 *TINY]) == 2  # fmt: skip
    assert "(a file, not a folder)" in one_line_error(capsys, "train")
    assert main(["train", "--data-dir", str(afile), "--output-dir", str(tmp_path / "run"),
                 *TINY]) == 2  # fmt: skip
    assert f"--data-dir {afile} exists and is not a folder" in one_line_error(capsys, "train")
    assert not (tmp_path / "run").exists()


def test_a_data_folder_the_loader_refuses_is_an_input_error(tmp_path, capsys):
    """What the dataset loader finds wrong with --data PATH (here: a JSON it cannot parse)
    is one line naming the file, exit 2, not an unexpected failure."""
    data = tmp_path / "voc"
    data.mkdir()
    (data / "voc07_train.json").write_text("[{not json")
    (data / "voc07_val.json").write_text("[]")
    assert main(["train", "--data", str(data), "--output-dir", str(tmp_path / "run"),
                 *TINY]) == 2  # fmt: skip
    message = one_line_error(capsys, "train")
    assert "voc07_train.json is not valid JSON" in message and "--debug" not in message


def _voc_folder(root):
    """A small VOC-format folder (the synthetic set's files, read through --data PATH)."""
    from detops.data import make_synthetic_detection_dataset

    make_synthetic_detection_dataset(root, num_train=4, num_val=2, image_size=64)
    return ["--data", str(root), "--classes", "circle,square,triangle,cross"]


def _voc_tiny():
    """TINY without the synthetic set's own options."""
    tiny = list(TINY)
    for option in ("--num-train", "--num-val"):
        at = tiny.index(option)
        del tiny[at : at + 2]
    return tiny


def test_an_image_damaged_past_its_header_is_an_input_error_naming_it(tmp_path, capsys):
    """The header check at build time passes; decoding the val image fails after training:
    one line naming the file, exit 2 (was an 'unexpected' exit 1)."""
    data = _voc_folder(tmp_path / "voc")
    damaged = tmp_path / "voc" / "images" / "val_00001.png"
    damaged.write_bytes(damaged.read_bytes()[:-300])
    argv = ["train", *data, "--output-dir", str(tmp_path / "run"), *_voc_tiny()]
    assert main(argv) == 2
    message = one_line_error(capsys, "train")
    assert message.startswith("VOC2007DetectionTiny: cannot decode image ")
    assert "val_00001.png" in message


def _damage_train_images(data_root):
    """Every train image cut past its header: the first training batch fails to decode."""
    for image in sorted((data_root / "images").glob("train_*.png")):
        image.write_bytes(image.read_bytes()[:-300])


def test_a_failed_run_removes_the_empty_output_folders_it_created(tmp_path, capsys):
    data = _voc_folder(tmp_path / "voc")
    _damage_train_images(tmp_path / "voc")
    output = tmp_path / "runs" / "new" / "run"
    assert main(["train", *data, "--output-dir", str(output), *_voc_tiny()]) == 2
    assert "cannot decode image" in one_line_error(capsys, "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["voc"]  # runs/new/run all gone


def test_a_failed_run_keeps_an_output_folder_that_existed(tmp_path, capsys):
    data = _voc_folder(tmp_path / "voc")
    _damage_train_images(tmp_path / "voc")
    existing = tmp_path / "existing"
    existing.mkdir()
    assert main(["train", *data, "--output-dir", str(existing), *_voc_tiny()]) == 2
    capsys.readouterr()
    assert existing.is_dir() and list(existing.iterdir()) == []
    # A new folder inside one that holds a file: the new one goes, the other stays.
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    output = tmp_path / "kept" / "run"
    assert main(["train", *data, "--output-dir", str(output), *_voc_tiny()]) == 2
    assert not output.exists() and (tmp_path / "kept" / "notes.txt").read_text() == "mine"


def test_a_moved_data_folder_resumes_and_other_data_is_refused(tmp_path, capsys):
    """A run is tied to its data's voc07_*.json, not to the folder's spelling or place."""
    data = _voc_folder(tmp_path / "voc")
    argv = ["train", "--output-dir", str(tmp_path / "run"), *_voc_tiny()]
    assert main([*argv, *data]) == 0
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["extra"]["args"]["data"] == str((tmp_path / "voc").resolve())  # absolute
    (tmp_path / "voc").rename(tmp_path / "moved")
    capsys.readouterr()
    assert main([*argv, "--data", str(tmp_path / "moved") + "/", *data[2:]]) == 0
    assert "resuming from iteration 2 of 2" in capsys.readouterr().out
    other = tmp_path / "other"
    _voc_folder(other)
    train_json = other / "voc07_train.json"
    train_json.write_text(json.dumps(json.loads(train_json.read_text())[:3]))
    assert main([*argv, "--data", str(other), *data[2:]]) == 2
    message = one_line_error(capsys, "train")
    assert "holds a run on other data" in message and "--no-resume" in message


@pytest.mark.parametrize(
    ("option", "value", "started"),
    [("--lr", "0.5", "with --lr 0.02"), ("--seed", "7", "with --seed 0"),
     ("--batch-size", "1", "with --batch-size 2")],
)  # fmt: skip
def test_rerun_with_another_run_defining_option_names_no_resume(
    trained, capsys, option, value, started
):
    """A resumed run keeps the settings it started with, so a re-run that changes one of
    them (and would record the new value in metrics.json) is refused."""
    _, args = trained
    before = (trained[0] / "run" / "metrics.json").read_text()
    assert main([*args, option, value]) == 2
    message = one_line_error(capsys, "train")
    assert f"holds a run started {started}, not with {option} {value}" in message
    assert "--no-resume" in message
    assert (trained[0] / "run" / "metrics.json").read_text() == before


def test_rerun_with_other_iterations_names_no_resume(trained, tmp_path, capsys):
    root, args = trained
    other = [*args, "--iterations", "3"]
    assert main(other) == 2
    message = one_line_error(capsys, "train")
    assert "--iterations 2" in message and "--no-resume" in message
    assert "resume=False" not in message


def _copy_run(root, tmp_path):
    """The trained fixture's arguments, writing to a fresh output dir."""
    _, args = root
    args = list(args)
    args[args.index("--output-dir") + 1] = str(tmp_path / "run")
    return args


def test_ctrl_c_in_train_saves_says_how_to_resume_and_exits_130(
    trained, tmp_path, capsys, monkeypatch
):
    args = _copy_run(trained, tmp_path)
    args[args.index("--iterations") + 1] = "4"
    real = detops.training.train_detector

    def interrupted_at_3(*a, **kw):
        def stop(iteration, values):
            if iteration == 3:
                raise KeyboardInterrupt

        return real(*a, **kw, on_iteration=stop)

    with monkeypatch.context() as patch:
        patch.setattr(detops.training, "train_detector", interrupted_at_3)
        assert main(["--debug", *args, "--no-resume"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "interrupted; checkpoint at iteration 3 of 4" in err[0]
    command = err[0].split("resume with: ", 1)[1]
    assert "--no-resume" not in command
    assert shlex.split(command)[:3] == [sys.executable, "-m", "detops"]  # this interpreter
    assert shlex.split(command)[3:] == ["--debug", *args]
    # The command it printed resumes the run.
    assert main(shlex.split(command)[3:]) == 0
    assert "resuming from iteration 3 of 4" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["resumed_from"] == 3 and metrics["iterations"] == 4


def test_ctrl_c_before_training_and_a_second_ctrl_c_still_give_the_resume_line(
    trained, tmp_path, capsys, monkeypatch
):
    import signal

    import detops.commands.train as train_command

    args = _copy_run(trained, tmp_path)

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # while the datasets are built
        patch.setattr(train_command, "_datasets", interrupted)
        assert main([*args, "--no-resume"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("detops train: interrupted; resume with: "), err

    real_load = detops.training.load_checkpoint

    def load_and_press_again(*a, **kw):  # a second Ctrl-C while the line is prepared
        os.kill(os.getpid(), signal.SIGINT)
        return real_load(*a, **kw)

    with monkeypatch.context() as patch:
        interrupt_torch_save(patch, call=2)
        patch.setattr(detops.training, "load_checkpoint", load_and_press_again)
        assert main([*args, "--iterations", "4", "--no-resume"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted; checkpoint at iteration 2 of 4" in err[0], err


def test_ctrl_c_before_anything_is_written_leaves_no_output_folder(
    trained, tmp_path, capsys, monkeypatch
):
    args = _copy_run(trained, tmp_path)

    def interrupted(*a, **kw):  # before the first iteration: no checkpoint yet
        raise KeyboardInterrupt

    monkeypatch.setattr(detops.training, "train_detector", interrupted)
    assert main([*args, "--no-resume"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted; no checkpoint written yet" in err[0], err
    assert not (tmp_path / "run").exists()


def test_ctrl_c_after_training_says_which_outputs_are_complete(
    trained, tmp_path, capsys, monkeypatch
):
    args = _copy_run(trained, tmp_path)

    def interrupted(*a, **kw):  # while the trained model is evaluated
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(detops.training, "evaluate_detector", interrupted)
        assert main([*args, "--no-resume"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(
        f"detops train: interrupted after training finished; complete in {tmp_path / 'run'}: "
        "checkpoint.pt (iteration 2 of 2), loss_curve.png; not written: val_grid.png, "
        "metrics.json; the same command evaluates the trained model and writes them: "
    ), err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint.pt",
        "loss_curve.png",
    ]
    # The command it names does what it says.
    assert main(shlex.split(err[0].split("writes them: ", 1)[1])[3:]) == 0
    assert "resuming from iteration 2 of 2" in capsys.readouterr().out
    assert (tmp_path / "run" / "metrics.json").exists()


def test_ctrl_c_during_the_final_summary_says_nothing_was_lost(
    trained, tmp_path, capsys, monkeypatch
):
    import builtins

    import detops.commands.train as train_command

    args = _copy_run(trained, tmp_path)

    def summary_interrupted(*a, **kw):
        if str(a[0]).startswith("final losses"):
            raise KeyboardInterrupt
        builtins.print(*a, **kw)

    monkeypatch.setattr(train_command, "print", summary_interrupted, raising=False)
    assert main([*args, "--no-resume"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "detops train: Ctrl-C after the run finished; nothing was lost: checkpoint.pt "
        "(iteration 2 of 2), loss_curve.png, val_grid.png, metrics.json in "
        f"{tmp_path / 'run'} are complete"
    ]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["iterations"] == 2


def test_ctrl_c_while_a_checkpoint_is_written_exits_130_with_the_resume_hint(
    trained, tmp_path, capsys, monkeypatch
):
    args = _copy_run(trained, tmp_path)
    args[args.index("--iterations") + 1] = "4"
    interrupt_torch_save(monkeypatch, call=2)  # the periodic checkpoint of iteration 2
    assert main([*args, "--no-resume"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted; checkpoint at iteration 2 of 4" in err[0], err
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")] == []


def test_ctrl_c_and_unexpected_errors_in_detect(trained, tmp_path, capsys, monkeypatch):
    root, _ = trained
    image = str(root / "data" / "images" / "val_00000.png")
    ckpt = str(root / "run" / "checkpoint.pt")
    argv = ["detect", "--checkpoint", ckpt, image, "--output-dir", str(tmp_path)]

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    def fail(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    def wrapped_interrupt(*args, **kwargs):  # a library's own error for the Ctrl-C
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")  # noqa: B904

    with monkeypatch.context() as patch:
        patch.setattr(detops.visualize, "save_detections_png", interrupt)
        assert main(argv) == 130
        assert capsys.readouterr().err.strip() == (
            f"detops detect: interrupted; 0 of 1 images written to {tmp_path}"
        )
        patch.setattr(detops.visualize, "save_detections_png", wrapped_interrupt)
        assert main(argv) == 130
        assert capsys.readouterr().err.strip() == "detops detect: interrupted"
        patch.setattr(detops.visualize, "save_detections_png", fail)
        assert main(argv) == 1
        assert capsys.readouterr().err.strip() == (
            "detops detect: error: RuntimeError: disk on fire ... "
            "(run with --debug for the traceback)"
        )
        # --debug adds the traceback; the exit status stays the same.
        assert main(["--debug", *argv]) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "RuntimeError: disk on fire" in err
        last = err.strip().splitlines()[-1]
        assert last == "detops detect: error: RuntimeError: disk on fire ..."


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError("no subcommands registered")


@pytest.mark.parametrize("command", ["train", "detect", "evaluate"])
def test_help_explains_every_option(command, capsys):
    sub = _subparser(command)
    for action in sub._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings
        assert not action.help.startswith("(default"), action.option_strings  # says what
        if action.default not in (None, False, argparse.SUPPRESS) and action.dest != "help":
            assert "default" in action.help, action.option_strings
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in sub._actions:
        for option in action.option_strings:
            assert option in text, option


def test_ctrl_c_in_the_demo_stops_it_with_130(tmp_path, capsys, monkeypatch):
    import detops.commands.demo as demo

    monkeypatch.setattr(demo, "DEMO_TRAIN_IMAGES", 4)
    monkeypatch.setattr(demo, "DEMO_VAL_IMAGES", 2)
    monkeypatch.setattr(demo, "DEMO_IMAGE_SIZE", 64)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(detops.training, "train_detector", interrupted)
    argv = ["demo", "--out", str(tmp_path), "--skip", "verify", "--skip", "torchvision"]
    assert main([*argv, "--skip", "bench", "--train-iterations", "1"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    # train's own line (how to resume it), then the demo's
    assert err[-1].startswith("detops demo: interrupted during train + detect")
    assert "Traceback" not in "\n".join(err)
    assert (tmp_path / "index.txt").read_text().startswith("detops demo, interrupted")


@pytest.mark.parametrize("load, noted", [(100.0, True), (0.1, False)])
def test_train_notes_a_busy_machine_when_it_runs_on_several_threads(
    trained, tmp_path, capsys, monkeypatch, load, noted
):
    root, _ = trained
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # torch's default here
    args = ["train", "--data", "synthetic", "--data-dir", str(root / "data")]
    args += ["--output-dir", str(tmp_path / "run"), *TINY, "--no-resume"]
    args[args.index("--iterations") + 1] = "1"
    assert main(args) == 0
    err = capsys.readouterr().err
    assert ("the machine is busy" in err and "--threads 1" in err) == noted


def test_a_warmup_as_long_as_the_run_is_pointed_out(tmp_path, capsys):
    args = ["train", "--data", "synthetic", "--data-dir", str(tmp_path / "data")]
    args += ["--output-dir", str(tmp_path / "run"), *TINY, "--warmup-iterations", "5"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (
        "note: the lr warm-up (5 iterations, --warmup-iterations) is not shorter than the " in out
    )
    assert "run (2): the learning rate never reaches --lr" in out


def test_no_warmup_note_for_a_short_warmup(trained, capsys):
    root, args = trained
    assert main([*args, "--no-resume", "--output-dir", str(root / "run2")]) == 0
    assert "note: the lr warm-up" not in capsys.readouterr().out


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_is_an_input_error_also_from_a_dataloader_worker(workers):
    """torch re-raises a worker's exception with the worker's traceback in its message; the
    one line detops prints keeps only the original message, naming the file."""
    from torch.utils.data import DataLoader, Dataset

    from detops._errors import InputError
    from detops.cli import input_error_message
    from detops.data import UnreadableImageError

    message = "VOC2007DetectionTiny: cannot decode image /x/val_1.png: OSError: truncated"

    class Damaged(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise UnreadableImageError(message)

    with pytest.raises(InputError) as info:
        list(DataLoader(Damaged(), num_workers=workers))
    assert input_error_message(info.value) == message
