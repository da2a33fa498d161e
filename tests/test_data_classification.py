import io
import os
import pickle

import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from detops.data import (
    LabelFileDataset,
    PerImageLabelDataset,
    UnreadableImageError,
    folder_per_class_dataset,
    is_image_file,
)


def write_image(path, color=(10, 20, 30), size=(5, 4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG"}[path.suffix.lower().lstrip(".")]
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


# --- folder per class (torchvision's ImageFolder on the seed's layout) ---------------------


def test_folder_per_class_on_seed_layout_with_uppercase_extension(tmp_path):
    # The seed's layout: dataset/cat/cat1.jpg, cat2.jpg; dataset/dog/dog1.jpg, dog2.jpg.
    # The seed's own loader checks endswith(('.jpg', '.png')) and drops DOG2.JPG.
    write_image(tmp_path / "cat" / "cat2.jpg")
    write_image(tmp_path / "cat" / "cat1.jpg")
    write_image(tmp_path / "dog" / "dog1.png")
    write_image(tmp_path / "dog" / "DOG2.JPG")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    dataset = folder_per_class_dataset(tmp_path)
    assert isinstance(dataset, ImageFolder)
    assert dataset.classes == ["cat", "dog"]
    names = [(os.path.relpath(p, tmp_path), label) for p, label in dataset.samples]
    assert names == [
        ("cat/cat1.jpg", 0),
        ("cat/cat2.jpg", 0),
        ("dog/DOG2.JPG", 1),
        ("dog/dog1.png", 1),
    ]
    image, label = dataset[2]
    assert image.size == (5, 4) and label == 1


def test_folder_per_class_loose_images_raise(tmp_path):
    write_image(tmp_path / "cat" / "a.jpg")
    write_image(tmp_path / "stray.PNG")
    with pytest.raises(
        ValueError, match=r"folder_per_class_dataset: .*directly in it: \[stray.PNG\]"
    ):
        folder_per_class_dataset(tmp_path)


def test_folder_per_class_empty_class_raises(tmp_path):
    write_image(tmp_path / "cat" / "a.jpg")
    (tmp_path / "dog").mkdir()
    with pytest.raises(FileNotFoundError, match="dog"):
        folder_per_class_dataset(tmp_path)


def test_folder_per_class_missing_root(tmp_path):
    with pytest.raises(ValueError, match=r"root must be an existing directory"):
        folder_per_class_dataset(tmp_path / "nope")


def test_is_image_file_case_insensitive():
    assert is_image_file("A.JPG") and is_image_file("b.Jpeg") and is_image_file("c.png")
    assert not is_image_file("d.txt") and not is_image_file("jpg")


# --- labels.txt ---------------------------------------------------------------------------


@pytest.fixture
def label_file_layout(tmp_path):
    images = tmp_path / "images"
    write_image(images / "002.jpg", (200, 0, 0))
    write_image(images / "001.JPG", (0, 200, 0))
    write_image(images / "sub" / "003.png", (0, 0, 200))
    return images, tmp_path / "labels.txt"


def test_label_file_space_and_comma_separators_sorted(label_file_layout):
    images, labels = label_file_layout
    labels.write_text("002.jpg 1\n\n# a comment\n001.JPG,0\nsub/003.png , 2\n")
    dataset = LabelFileDataset(images, labels)
    rel = [(os.path.relpath(p, images), y) for p, y in dataset.samples]
    assert rel == [("001.JPG", 0), ("002.jpg", 1), ("sub/003.png", 2)]
    assert dataset.targets == [0, 1, 2]
    image, label = dataset[1]
    assert image.getpixel((0, 0))[0] > 150 and label == 1


def test_label_file_names_may_hold_spaces(label_file_layout):
    images, labels = label_file_layout
    write_image(images / "IMG 004.jpg", (9, 9, 9))
    write_image(images / "my 1 img.png", (9, 9, 9))
    labels.write_text("001.JPG 0\n002.jpg 1\nsub/003.png 2\nIMG 004.jpg 3\nmy 1 img.png,4\n")
    rel = {os.path.relpath(p, images): y for p, y in LabelFileDataset(images, labels).samples}
    assert rel["IMG 004.jpg"] == 3 and rel["my 1 img.png"] == 4 and len(rel) == 5


def test_label_file_transforms(label_file_layout):
    images, labels = label_file_layout
    labels.write_text("001.JPG 0\n002.jpg 1\nsub/003.png 2\n")
    dataset = LabelFileDataset(
        images, labels, transform=lambda im: im.size, target_transform=lambda y: y * 10
    )
    assert dataset[2] == ((5, 4), 20)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("001.JPG 0\n002.jpg\n", r"labels.txt:2: expected 'filename label'"),
        ("001.JPG 0\n002.jpg 1 7\n", r"labels.txt:2: expected 'filename label'"),
        ("001.JPG zero\n", r"labels.txt:1: expected 'filename label'"),
        ("\n\n001.JPG -1\n", r"labels.txt:3: expected 'filename label'"),
        ("001.JPG 0\nnotes.txt 1\n", r"labels.txt:2: filename must have an image extension"),
        ("001.JPG 0\n001.JPG 1\n", r"labels.txt:2: '001.JPG' is listed twice \(first on line 1\)"),
        ("../001.JPG 0\n", r"labels.txt:1: image path must stay inside"),
        ("/etc/001.jpg 0\n", r"labels.txt:1: image path must stay inside"),
        ("sub/../../x.jpg 0\n", r"labels.txt:1: image path must stay inside"),
    ],
)
def test_label_file_errors(label_file_layout, content, match):
    images, labels = label_file_layout
    labels.write_text(content)
    with pytest.raises(ValueError, match=r"LabelFileDataset: .*" + match):
        LabelFileDataset(images, labels)


def test_label_file_missing_and_unlabeled_images_are_listed(label_file_layout):
    images, labels = label_file_layout
    labels.write_text("001.JPG 0\n004.jpg 1\n005.png 1\n")
    with pytest.raises(ValueError) as info:
        LabelFileDataset(images, labels)
    message = str(info.value)
    assert "labels for missing images [004.jpg, 005.png]" in message
    assert "images without a label [002.jpg, sub/003.png]" in message


def test_label_file_symlink_escape(label_file_layout, tmp_path):
    images, labels = label_file_layout
    outside = write_image(tmp_path / "outside" / "secret.jpg")
    os.symlink(outside, images / "link.jpg")
    labels.write_text("001.JPG 0\n002.jpg 1\nsub/003.png 2\nlink.jpg 0\n")
    with pytest.raises(ValueError, match=r"LabelFileDataset: .*(resolves outside|outside)"):
        LabelFileDataset(images, labels)


# --- one label file per image -------------------------------------------------------------


@pytest.fixture
def per_image_layout(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    write_image(images / "b.png")
    write_image(images / "a.JPG")
    write_image(images / "c" / "d.jpeg")
    labels.mkdir()
    (labels / "c").mkdir()
    return images, labels


def test_per_image_single_label(per_image_layout):
    images, labels = per_image_layout
    (labels / "a.txt").write_text("3\n")
    (labels / "b.txt").write_text("  0  \n\n")
    (labels / "c" / "d.txt").write_text("1")
    (labels / "README.md").write_text("ignored: not a .txt file")
    dataset = PerImageLabelDataset(images, labels)
    rel = [(os.path.relpath(p, images), y) for p, y in dataset.samples]
    assert rel == [("a.JPG", 3), ("b.png", 0), ("c/d.jpeg", 1)]
    assert dataset[0][1] == 3


def test_per_image_multi_label(per_image_layout):
    images, labels = per_image_layout
    (labels / "a.txt").write_text("1 0 1\n")
    (labels / "b.txt").write_text("0,1,0")
    (labels / "c" / "d.txt").write_text("0 0 0")
    dataset = PerImageLabelDataset(images, labels, multi_label=True)
    assert dataset.num_labels == 3
    _, target = dataset[0]
    assert target.dtype == torch.int64 and target.tolist() == [1, 0, 1]
    assert dataset[1][1].tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    ("multi", "content", "match"),
    [
        (False, "1 0 1\n", r"a.txt:1: expected a single non-negative integer label"),
        (False, "x\n", r"a.txt:1: expected a single non-negative integer label"),
        (False, "", r"a.txt:1: expected one line of labels, got an empty file"),
        (False, "1\n\n2\n", r"a.txt:3: expected one line of labels, got a second"),
        (True, "1 2 0\n", r"a.txt:1: expected a multi-hot vector of 0/1 values"),
        (True, "1 0\n", r"multi-hot label vectors must all have the same length"),
    ],
)
def test_per_image_malformed(per_image_layout, multi, content, match):
    images, labels = per_image_layout
    (labels / "a.txt").write_text(content)
    (labels / "b.txt").write_text("0 1 0" if multi else "0")
    (labels / "c" / "d.txt").write_text("1 1 1" if multi else "1")
    with pytest.raises(ValueError, match=r"PerImageLabelDataset: .*" + match):
        PerImageLabelDataset(images, labels, multi_label=multi)


def test_per_image_missing_and_orphan_labels_are_listed(per_image_layout):
    images, labels = per_image_layout
    (labels / "a.txt").write_text("0")
    (labels / "zzz.txt").write_text("0")
    with pytest.raises(ValueError) as info:
        PerImageLabelDataset(images, labels)
    message = str(info.value)
    assert "images without a label file [b.png, c/d.jpeg]" in message
    assert "label files without an image [zzz.txt]" in message


def test_per_image_same_stem_raises(per_image_layout):
    images, labels = per_image_layout
    write_image(images / "a.png")
    for name in ("a", "b", "c/d"):
        (labels / f"{name}.txt").write_text("0")
    with pytest.raises(ValueError, match=r"images sharing a stem .*a.JPG / a.png"):
        PerImageLabelDataset(images, labels)


def test_symlinked_folders_followed_inside_refused_outside_no_loop(tmp_path):
    images = tmp_path / "images"
    write_image(images / "real" / "a.jpg")
    os.symlink(images / "real", images / "alias")  # inside: followed (ImageFolder does too)
    os.symlink(images, images / "real" / "loop")  # back to a visited folder: not a loop
    labels = tmp_path / "labels.txt"
    labels.write_text("real/a.jpg 0\nalias/a.jpg 1\n")
    dataset = LabelFileDataset(images, labels)
    assert [os.path.relpath(p, images) for p, _ in dataset.samples] == ["alias/a.jpg", "real/a.jpg"]

    write_image(tmp_path / "outside" / "b.jpg")
    os.symlink(tmp_path / "outside", images / "out")
    with pytest.raises(ValueError, match=r"links pointing outside: \[out/\]"):
        LabelFileDataset(images, labels)


# --- empty datasets, unreadable files, argument types -----------------------------------


def jpeg_cut_past_its_header(path):
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=generator)
    buffer = io.BytesIO()
    Image.fromarray(noise.numpy()).save(buffer, format="JPEG", quality=95)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with Image.open(path) as image:  # the header is intact: only decoding fails
        assert image.size == (32, 32)
    return path


def test_folder_per_class_leaves_out_hidden_folders(tmp_path):
    write_image(tmp_path / ".cache" / "x.jpg")
    write_image(tmp_path / ".ipynb_checkpoints" / "y.png")
    write_image(tmp_path / "cat" / "a.jpg")
    write_image(tmp_path / "dog" / "b.jpg")
    dataset = folder_per_class_dataset(tmp_path)
    assert isinstance(dataset, ImageFolder)
    assert dataset.classes == ["cat", "dog"]
    assert dataset.class_to_idx == {"cat": 0, "dog": 1}
    names = [(os.path.relpath(p, tmp_path), label) for p, label in dataset.samples]
    assert names == [("cat/a.jpg", 0), ("dog/b.jpg", 1)]
    image, label = pickle.loads(pickle.dumps(dataset))[1]  # DataLoader workers pickle it
    assert image.size == (5, 4) and label == 1


def test_folder_per_class_only_hidden_folders_raises(tmp_path):
    write_image(tmp_path / ".ipynb_checkpoints" / "y.png")
    with pytest.raises(
        FileNotFoundError,
        match=r"folder_per_class_dataset: found no class folder .*\[\.ipynb_checkpoints\]",
    ):
        folder_per_class_dataset(tmp_path)


def test_folder_per_class_unreadable_images(tmp_path):
    write_image(tmp_path / "cat" / "a.jpg")
    (tmp_path / "dog" / "b.jpg").parent.mkdir()
    (tmp_path / "dog" / "b.jpg").write_bytes(b"not an image")
    with pytest.raises(
        ValueError, match=r"folder_per_class_dataset: .*cannot open .*\[dog/b.jpg \(Unidentified"
    ):
        folder_per_class_dataset(tmp_path)

    jpeg_cut_past_its_header(tmp_path / "dog" / "b.jpg")
    dataset = folder_per_class_dataset(tmp_path)
    with pytest.raises(
        UnreadableImageError,
        match=r"folder_per_class_dataset: cannot decode image .*dog/b.jpg: OSError",
    ) as info:
        dataset[1]
    assert isinstance(info.value.__cause__, OSError)


@pytest.mark.parametrize("content", ["", "# only a comment\n\n"])
def test_label_file_with_no_images_raises(tmp_path, content):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels.txt").write_text(content)
    with pytest.raises(ValueError, match=r"LabelFileDataset: .*images' holds no images"):
        LabelFileDataset(tmp_path / "images", tmp_path / "labels.txt")


def test_per_image_with_no_images_raises(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(ValueError, match=r"PerImageLabelDataset: .*images' holds no images"):
        PerImageLabelDataset(tmp_path / "images", tmp_path / "labels")


def test_label_file_not_utf8_names_op_and_file(label_file_layout):
    images, labels = label_file_layout
    labels.write_bytes("001.JPG 0\ncafé.jpg 1\n".encode("latin-1"))
    with pytest.raises(
        ValueError, match=r"LabelFileDataset: .*labels.txt must be UTF-8 text"
    ) as info:
        LabelFileDataset(images, labels)
    assert isinstance(info.value.__cause__, UnicodeDecodeError)


def test_per_image_label_file_not_utf8_names_op_and_file(per_image_layout):
    images, labels = per_image_layout
    (labels / "a.txt").write_bytes(b"\xff\xfe0")
    (labels / "b.txt").write_text("0")
    (labels / "c" / "d.txt").write_text("1")
    with pytest.raises(ValueError, match=r"PerImageLabelDataset: .*a.txt must be UTF-8 text"):
        PerImageLabelDataset(images, labels)


@pytest.mark.parametrize("multi_label", ["no", 1, None])
def test_per_image_multi_label_must_be_a_bool(per_image_layout, multi_label):
    images, labels = per_image_layout
    got = type(multi_label).__name__
    with pytest.raises(
        TypeError, match=rf"PerImageLabelDataset: multi_label must be a bool, got {got}"
    ):
        PerImageLabelDataset(images, labels, multi_label=multi_label)


def test_label_file_unreadable_images(label_file_layout):
    images, labels = label_file_layout
    (images / "002.jpg").write_bytes(b"GIF89a but not really")
    labels.write_text("001.JPG 0\n002.jpg 1\nsub/003.png 2\n")
    with pytest.raises(
        ValueError, match=r"LabelFileDataset: .*PIL cannot open .*\[002.jpg \(Unidentified"
    ):
        LabelFileDataset(images, labels)

    jpeg_cut_past_its_header(images / "002.jpg")
    dataset = LabelFileDataset(images, labels)
    decode = r"LabelFileDataset: cannot decode image .*002.jpg"
    with pytest.raises(UnreadableImageError, match=decode):
        dataset[1]


def test_per_image_unreadable_images(per_image_layout):
    images, labels = per_image_layout
    (images / "b.png").write_bytes(b"")
    for name in ("a", "b", "c/d"):
        (labels / f"{name}.txt").write_text("0")
    with pytest.raises(
        ValueError, match=r"PerImageLabelDataset: .*PIL cannot open .*\[b.png \(Unidentified"
    ):
        PerImageLabelDataset(images, labels)

    (images / "b.png").unlink()
    jpeg_cut_past_its_header(images / "b.jpg")
    dataset = PerImageLabelDataset(images, labels)
    assert dataset[0][0].size == (5, 4)
    decode = r"PerImageLabelDataset: cannot decode image .*b.jpg"
    with pytest.raises(UnreadableImageError, match=decode):
        dataset[1]
