import json
from collections import Counter

import numpy as np
import pytest
import torch

import detops.data.synthetic as synthetic_module
from detops._atomic import atomic_write_bytes
from detops.data import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_COLORS,
    VOC2007DetectionTiny,
    make_synthetic_detection_dataset,
    synthetic_image,
    synthetic_shape_mask,
)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    names = make_synthetic_detection_dataset(root, num_train=6, num_val=3, image_size=64, seed=3)
    assert names == SYNTHETIC_CLASSES
    return root


def test_writes_course_format(synthetic_root):
    entries = json.loads((synthetic_root / "voc07_train.json").read_text())
    assert len(entries) == 6
    path, objects = entries[0]
    assert path == "./here/images/train_00000.png"
    assert (synthetic_root / "images" / "train_00000.png").is_file()
    assert 1 <= len(objects) <= 3
    assert set(objects[0]) == {"xyxy", "name"} and objects[0]["name"] in SYNTHETIC_CLASSES
    assert len(json.loads((synthetic_root / "voc07_val.json").read_text())) == 3
    assert not list(synthetic_root.rglob("*.tmp"))


def test_loads_end_to_end_with_the_real_loader(synthetic_root):
    entries = json.loads((synthetic_root / "voc07_val.json").read_text())
    dataset = VOC2007DetectionTiny(
        synthetic_root, "val", image_size=64, max_boxes=5, class_names=SYNTHETIC_CLASSES
    )
    assert len(dataset) == 3
    for (path, image, gt), (_, objects) in zip(dataset, entries, strict=True):
        assert path.endswith(".png") and image.shape == (3, 64, 64)
        # Stored at the loader's size: Resize + CenterCrop leave the boxes where they are.
        expected = [[*o["xyxy"], SYNTHETIC_CLASSES.index(o["name"])] for o in objects]
        assert gt[: len(objects)].tolist() == expected
        assert (gt[len(objects) :] == -1).all()
    loader = torch.utils.data.DataLoader(dataset, batch_size=3)
    _, images, gt = next(iter(loader))
    assert images.shape == (3, 3, 64, 64) and gt.shape == (3, 5, 5)


def _near(pixels, color):
    return (np.abs(pixels.astype(np.float64) - color).max(axis=-1) < 45).astype(bool)


@pytest.mark.parametrize("kind", range(len(SYNTHETIC_CLASSES)))
def test_shape_masks_reach_every_edge_of_their_box(kind):
    for size in (7, 29, 58):
        mask = synthetic_shape_mask(kind, size)
        assert mask.shape == (size, size)
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
        assert mask.mean() > 0.45, (kind, size)


@pytest.mark.parametrize("index", range(4))
def test_boxes_sit_on_the_drawn_shapes(index):
    # Objects are drawn in their class colour (jitter <= 20, noise sd 6) on grey noise, in
    # which a pixel now and then falls near a class colour. Inside the box: object pixels
    # on all four edge lines and a large filled fraction. The lines just outside: at most a
    # few stray pixels (a box one pixel off would put a whole edge of a square there).
    pixels, objects = synthetic_image(11, "train", index, 96)
    assert pixels.shape == (96, 96, 3) and pixels.dtype == np.uint8
    for obj in objects:
        x1, y1, x2, y2 = (int(v) for v in obj["xyxy"])
        mask = _near(pixels, SYNTHETIC_COLORS[SYNTHETIC_CLASSES.index(obj["name"])])
        inside = mask[y1:y2, x1:x2]
        assert inside[0].any() and inside[-1].any(), obj
        assert inside[:, 0].any() and inside[:, -1].any(), obj
        assert inside.mean() > 0.4, obj
        for line in (mask[y1 - 1, x1:x2], mask[y2, x1:x2], mask[y1:y2, x1 - 1], mask[y1:y2, x2]):
            assert line.mean() < 0.15, obj


def test_objects_are_large_separated_and_all_classes_appear():
    counts = Counter()
    for index in range(48):
        _, objects = synthetic_image(0, "train", index, 128)
        assert 1 <= len(objects) <= 3
        boxes = [o["xyxy"] for o in objects]
        for x1, y1, x2, y2 in boxes:
            assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128
            assert 0.2 * 128 <= x2 - x1 <= 0.46 * 128
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                apart_x = a[2] + 6 <= b[0] or b[2] + 6 <= a[0]
                apart_y = a[3] + 6 <= b[1] or b[3] + 6 <= a[1]
                assert apart_x or apart_y, (a, b)
        counts.update(o["name"] for o in objects)
    assert set(counts) == set(SYNTHETIC_CLASSES), counts


def test_deterministic_and_val_independent_of_num_train(tmp_path):
    a = synthetic_image(5, "val", 2, 64)
    b = synthetic_image(5, "val", 2, 64)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(a[0], synthetic_image(6, "val", 2, 64)[0])
    assert not np.array_equal(a[0], synthetic_image(5, "train", 2, 64)[0])

    make_synthetic_detection_dataset(tmp_path / "x", num_train=2, num_val=2, image_size=48)
    make_synthetic_detection_dataset(tmp_path / "y", num_train=5, num_val=2, image_size=48)
    for rel in ("voc07_val.json", "images/val_00001.png", "images/train_00001.png"):
        assert (tmp_path / "x" / rel).read_bytes() == (tmp_path / "y" / rel).read_bytes(), rel


def test_second_call_writes_nothing_and_new_parameters_rewrite(tmp_path):
    make_synthetic_detection_dataset(tmp_path, num_train=2, num_val=1, image_size=48)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    make_synthetic_detection_dataset(tmp_path, num_train=2, num_val=1, image_size=48)
    assert {p: p.stat().st_mtime_ns for p in files} == stamps

    first = (tmp_path / "images" / "train_00000.png").read_bytes()
    make_synthetic_detection_dataset(tmp_path, num_train=2, num_val=1, image_size=48, seed=1)
    assert json.loads((tmp_path / "synthetic.json").read_text())["seed"] == 1
    assert (tmp_path / "images" / "train_00000.png").read_bytes() != first

    (tmp_path / "images" / "val_00000.png").unlink()  # damaged set: regenerated
    make_synthetic_detection_dataset(tmp_path, num_train=2, num_val=1, image_size=48, seed=1)
    assert (tmp_path / "images" / "val_00000.png").is_file()


def test_a_smaller_set_removes_the_images_of_the_larger_one_and_nothing_else(tmp_path):
    make_synthetic_detection_dataset(tmp_path, num_train=4, num_val=3, image_size=48)
    (tmp_path / "images" / "train_00009.txt").write_text("mine")  # not a name it writes
    (tmp_path / "images" / "notes.png").write_bytes(b"mine")
    make_synthetic_detection_dataset(tmp_path, num_train=2, num_val=1, image_size=48)
    kept = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert kept == [
        "notes.png",
        "train_00000.png",
        "train_00001.png",
        "train_00009.txt",
        "val_00000.png",
    ]
    listed = [
        entry[0]
        for split in ("train", "val")
        for entry in json.loads((tmp_path / f"voc07_{split}.json").read_text())
    ]
    written = ["train_00000.png", "train_00001.png", "val_00000.png"]
    assert listed == [f"./here/images/{name}" for name in written]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_train": 0}, ValueError, r"num_train must be >= 1, got 0"),
        ({"image_size": 16}, ValueError, r"image_size must be >= 32, got 16"),
        ({"num_val": 2.0}, TypeError, r"num_val must be an int, got float"),
        ({"seed": -1}, ValueError, r"seed must be a non-negative int, got -1"),
    ],
)
def test_argument_errors(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=r"make_synthetic_detection_dataset: " + match):
        make_synthetic_detection_dataset(tmp_path, **kwargs)


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_refuses_a_real_voc_folder_and_changes_nothing(tmp_path):
    # The CLI's `train --data synthetic --data-dir DIR` once replaced DIR's own JSON files.
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "JPEGImages" / "000005.jpg").write_bytes(b"a real photo")
    entries = [["./here/JPEGImages/000005.jpg", [{"xyxy": [1, 2, 30, 40], "name": "cow"}]]]
    for split in ("train", "val"):
        (tmp_path / f"voc07_{split}.json").write_text(json.dumps(entries))
    before = _tree(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(
            ValueError,
            match=r"make_synthetic_detection_dataset: .* holds files that are not a synthetic "
            r"set made by this function .*\[JPEGImages, voc07_train.json, voc07_val.json\]; "
            r"nothing was changed",
        ):
            make_synthetic_detection_dataset(tmp_path, num_train=2, num_val=1, overwrite=overwrite)
    assert _tree(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["JPEGImages", "voc07_train.json", "voc07_val.json"]
    )


def test_a_folder_holding_only_hidden_files_is_used_and_keeps_them(tmp_path):
    (tmp_path / ".DS_Store").write_bytes(b"finder")
    make_synthetic_detection_dataset(tmp_path, num_train=2, num_val=1, image_size=32)
    assert (tmp_path / ".DS_Store").read_bytes() == b"finder"
    assert (tmp_path / "voc07_train.json").is_file()


def test_root_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "data"
    path.write_text("not a folder")
    refused = r"make_synthetic_detection_dataset: root must be a folder .*data"
    with pytest.raises(ValueError, match=refused + r"', which is a file"):
        make_synthetic_detection_dataset(path, num_train=1, num_val=1)
    with pytest.raises(ValueError, match=refused + r"/sub', where a folder cannot be created"):
        make_synthetic_detection_dataset(path / "sub", num_train=1, num_val=1)
    assert path.read_text() == "not a folder"
    with pytest.raises(
        TypeError, match=r"root must be a path \(str or os.PathLike\), got NoneType"
    ):
        make_synthetic_detection_dataset(None)


def test_empty_folder_is_used_and_an_interrupted_set_is_rewritten(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    make_synthetic_detection_dataset(empty, num_train=1, num_val=1, image_size=32)
    assert (empty / "synthetic.json").is_file() and (empty / "voc07_val.json").is_file()

    # A run stopped after its first image leaves the record, marked incomplete, so the
    # folder is still recognised as a synthetic set and the next call rewrites it.
    written = []

    def stop_after_one_image(path, data, **kwargs):
        if written:
            raise KeyboardInterrupt
        written.append(path)
        return atomic_write_bytes(path, data, **kwargs)

    root = tmp_path / "interrupted"
    monkeypatch.setattr(synthetic_module, "atomic_write_bytes", stop_after_one_image)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_detection_dataset(root, num_train=2, num_val=1, image_size=32)
    monkeypatch.undo()
    assert json.loads((root / "synthetic.json").read_text())["complete"] is False
    make_synthetic_detection_dataset(root, num_train=2, num_val=1, image_size=32)
    assert "complete" not in json.loads((root / "synthetic.json").read_text())
    assert len(json.loads((root / "voc07_train.json").read_text())) == 2
