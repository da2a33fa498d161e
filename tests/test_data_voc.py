import hashlib
import io
import json
import os
import tarfile

import pytest
import torch
from PIL import Image

import detops.data.download as download_module
from detops.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VOC_CLASSES,
    ChecksumError,
    RemoteFile,
    UnreadableImageError,
    UnverifiedDownloadWarning,
    VOC2007DetectionTiny,
    download_voc2007_tiny,
    safe_extract_tar,
)

JPEG_DIR = "VOCdevkit/VOC2007/JPEGImages"


def png_bytes(width, height, color):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_voc(root, entries, images):
    """``images``: relative path -> (width, height, color); entries as the course JSON."""
    for rel, (width, height, color) in images.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(width, height, color))
    (root / "voc07_train.json").write_text(json.dumps(entries))


def test_loads_course_format_with_hand_computed_boxes(tmp_path):
    # Image 200 wide, 100 high, image_size 50: Resize(50) scales by 0.5 to 100x50, then
    # CenterCrop(50) cuts left = (100 - 50) / 2 = 25 columns.
    #   dog   [60, 20, 100, 80] -> [30-25, 10, 50-25, 40]          = [5, 10, 25, 40]
    #   cat   [0, 0, 40, 40]    -> x [0, 20] - 25 = [-25, -5] -> clamped to [0, 0]: empty,
    #                              the row becomes -1 where it stood.
    #   person [150, 0, 200, 100] -> [75-25, 0, 100-25, 50] = [50, 0, 75, 50] -> x1 clamped
    #                              to 50 = x2 clamp 50: empty -> -1.
    #   car   [90, 10, 130, 90] -> [45-25, 5, 65-25, 45] = [20, 5, 40, 45]
    entries = [
        [
            f"./here/{JPEG_DIR}/000001.png",
            [
                {"xyxy": [60, 20, 100, 80], "name": "dog"},
                {"xyxy": [0, 0, 40, 40], "name": "cat"},
                {"xyxy": [150, 0, 200, 100], "name": "person"},
                {"xyxy": [90, 10, 130, 90], "name": "car"},
            ],
        ],
        [f"{JPEG_DIR}/000002.png", []],
    ]
    write_voc(
        tmp_path,
        entries,
        {
            f"{JPEG_DIR}/000001.png": (200, 100, (255, 0, 0)),
            f"{JPEG_DIR}/000002.png": (30, 60, (0, 0, 0)),
        },
    )
    dataset = VOC2007DetectionTiny(tmp_path, "train", image_size=50, max_boxes=6)
    assert len(dataset) == 2 and dataset.class_names == VOC_CLASSES
    path, image, gt = dataset[0]
    assert path == str(tmp_path / JPEG_DIR / "000001.png")
    assert image.shape == (3, 50, 50) and image.dtype == torch.float32
    # A pure red image normalizes to ((1, 0, 0) - mean) / std everywhere.
    expected = torch.tensor(
        [(c - m) / s for c, m, s in zip((1.0, 0.0, 0.0), IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    )
    assert torch.allclose(image[:, 7, 31], expected, atol=1e-6)
    dog, car, cat, person = VOC_CLASSES.index("dog"), VOC_CLASSES.index("car"), 7, 14
    assert (cat, person) == (VOC_CLASSES.index("cat"), VOC_CLASSES.index("person"))
    assert gt.shape == (6, 5) and gt.dtype == torch.float32
    assert gt.tolist() == [
        [5, 10, 25, 40, dog],
        [-1] * 5,
        [-1] * 5,
        [20, 5, 40, 45, car],
        [-1] * 5,
        [-1] * 5,
    ]
    _, image2, gt2 = dataset[1]
    assert image2.shape == (3, 50, 50) and (gt2 == -1).all()


def test_dataloader_batches_the_triple(tmp_path):
    entries = [[f"./here/a{i}.png", [{"xyxy": [1, 1, 9, 9], "name": "cat"}]] for i in range(3)]
    write_voc(tmp_path, entries, {f"a{i}.png": (10, 10, (0, 0, 0)) for i in range(3)})
    loader = torch.utils.data.DataLoader(VOC2007DetectionTiny(tmp_path, image_size=8), batch_size=3)
    paths, images, gt = next(iter(loader))
    assert len(paths) == 3 and images.shape == (3, 3, 8, 8) and gt.shape == (3, 40, 5)


@pytest.mark.parametrize(
    ("entries", "error", "match"),
    [
        ([["./here/a.png", [{"xyxy": [0, 0, 1, 1], "name": "unicorn"}]]], ValueError,
         r"classes that are not in class_names: 'unicorn' \(first in entry 0\)"),
        ([["./here/a.png", [{"xyxy": [0, 0, 1], "name": "cat"}]]], ValueError,
         r"entry 0 box 0 must be \{'xyxy'"),
        ([["./here/a.png", [{"xyxy": [0, 0, 1, float("nan")], "name": "cat"}]]], ValueError,
         r"entry 0 box 0 must be"),
        ([["./here/a.png"]], ValueError, r"entry 0 must be \[image_path"),
        ({"a": 1}, ValueError, r"must hold a list"),
        ([["./here/missing.png", []]], ValueError, r"lists images missing .*\[missing.png\]"),
        ([["./here/../a.png", []]], ValueError, r"image path must stay inside"),
        ([["/abs/a.png", []]], ValueError, r"image path must stay inside"),
        ([["./here/a.png", [{"xyxy": [0, 0, 1, 1], "name": "cat"}] * 3]], ValueError,
         r"has 3 boxes, more than max_boxes=2"),
        ([], ValueError, r"voc07_train.json holds no images"),
        ([["./here/a.png", [{"xyxy": [0, 0, 2, 2], "name": "cat"},
                            {"xyxy": [3, 1, 2, 4], "name": "dog"}]]], ValueError,
         r"voc07_train.json entry 0 \(./here/a.png\) box 1 is inverted: .*got \[3, 1, 2, 4\]"),
        ([["./here/a.png", [{"xyxy": [1, 3, 2, 2], "name": "cat"}]]], ValueError,
         r"entry 0 \(./here/a.png\) box 0 is inverted"),
    ],
)  # fmt: skip
def test_json_errors(tmp_path, entries, error, match):
    write_voc(tmp_path, entries, {"a.png": (4, 4, (0, 0, 0))})
    with pytest.raises(error, match=r"VOC2007DetectionTiny: .*" + match):
        VOC2007DetectionTiny(tmp_path, image_size=4, max_boxes=2)


def test_empty_val_split_raises(tmp_path):
    write_voc(tmp_path, [["a.png", []]], {"a.png": (4, 4, (0, 0, 0))})
    (tmp_path / "voc07_val.json").write_text("[]")
    with pytest.raises(ValueError, match=r"VOC2007DetectionTiny: .*voc07_val.json holds no images"):
        VOC2007DetectionTiny(tmp_path, "val", image_size=4)


def test_inverted_box_from_the_trial_names_file_entry_and_box(tmp_path):
    entries = [
        ["./here/a.png", []],
        ["./here/b.png", [{"xyxy": [50, 60, 10, 10], "name": "cat"}]],
    ]
    write_voc(tmp_path, entries, {"a.png": (80, 80, (0, 0, 0)), "b.png": (80, 80, (0, 0, 0))})
    with pytest.raises(ValueError) as info:
        VOC2007DetectionTiny(tmp_path, image_size=80)
    message = str(info.value)
    assert message.startswith("VOC2007DetectionTiny: ")
    assert str(tmp_path / "voc07_train.json") + " entry 1 (./here/b.png) box 0" in message
    assert "[50, 60, 10, 10]" in message


def test_zero_width_box_is_kept_as_an_empty_row(tmp_path):
    # The course code keeps zero-width boxes; they become -1 rows like boxes cropped away.
    entries = [["a.png", [{"xyxy": [2, 1, 2, 3], "name": "cat"}]]]
    write_voc(tmp_path, entries, {"a.png": (4, 4, (0, 0, 0))})
    dataset = VOC2007DetectionTiny(tmp_path, image_size=4, max_boxes=1)
    assert dataset.instances[0][1].tolist() == [[2, 1, 2, 3, VOC_CLASSES.index("cat")]]
    assert dataset[0][2].tolist() == [[-1] * 5]


def jpeg_bytes(size=64):
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=generator)
    buffer = io.BytesIO()
    Image.fromarray(noise.numpy()).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_unreadable_images_raise_at_build_naming_them(tmp_path):
    # The trial's cases: a JPEG cut to 400 bytes (its Huffman tables cut: PIL's header
    # read fails with "Truncated File Read") and a .jpg holding no image.
    entries = [["ok.png", []], ["cut.jpg", []], ["bad.jpg", []], ["empty.png", []]]
    write_voc(tmp_path, entries, {"ok.png": (4, 4, (0, 0, 0))})
    (tmp_path / "cut.jpg").write_bytes(jpeg_bytes()[:400])
    (tmp_path / "bad.jpg").write_bytes(b"this is not a JPEG" * 10)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError) as info:
        VOC2007DetectionTiny(tmp_path, image_size=4)
    message = str(info.value)
    assert message.startswith("VOC2007DetectionTiny: ")
    assert "voc07_train.json lists images that PIL cannot open" in message
    assert "cut.jpg (" in message
    assert "bad.jpg (UnidentifiedImageError: " in message
    assert "empty.png (UnidentifiedImageError: " in message
    assert "ok.png" not in message


def test_image_damaged_past_its_header_raises_naming_it_when_read(tmp_path):
    write_voc(tmp_path, [["ok.png", []], ["cut.jpg", []]], {"ok.png": (4, 4, (0, 0, 0))})
    data = jpeg_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with Image.open(tmp_path / "cut.jpg") as image:  # the header is intact
        assert image.size == (64, 64)
    dataset = VOC2007DetectionTiny(tmp_path, image_size=4)
    assert dataset[0][1].shape == (3, 4, 4)
    with pytest.raises(
        UnreadableImageError, match=r"VOC2007DetectionTiny: cannot decode image .*cut.jpg: OSError"
    ) as info:
        dataset[1]
    assert isinstance(info.value.__cause__, OSError)


def test_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"voc07_val.json not found.*download=True"):
        VOC2007DetectionTiny(tmp_path, "val")
    with pytest.raises(ValueError, match=r"split must be 'train' or 'val', got 'test'"):
        VOC2007DetectionTiny(tmp_path, "test")
    with pytest.raises(ValueError, match=r"image_size must be > 0, got 0"):
        VOC2007DetectionTiny(tmp_path, image_size=0)
    with pytest.raises(ValueError, match=r"class_names must be distinct"):
        VOC2007DetectionTiny(tmp_path, class_names=["a", "a"])


def test_custom_class_names(tmp_path):
    write_voc(
        tmp_path,
        [["a.png", [{"xyxy": [0, 0, 4, 4], "name": "blob"}]]],
        {"a.png": (4, 4, (0, 0, 0))},
    )
    dataset = VOC2007DetectionTiny(tmp_path, image_size=4, class_names=("thing", "blob"))
    assert dataset[0][2][0].tolist() == [0, 0, 4, 4, 1]
    assert dataset.idx_to_class == {0: "thing", 1: "blob"}


# --- download -----------------------------------------------------------------------------


def make_tar(members):
    """``members``: name -> bytes, or (name, TarInfo-tweak) pairs via callables."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            if callable(payload):
                payload(info)
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def course_payloads():
    image = png_bytes(20, 10, (0, 255, 0))
    archive = make_tar({f"{JPEG_DIR}/000005.png": image, "VOCdevkit/VOC2007/README": b"hi"})
    entry = [[f"./here/{JPEG_DIR}/000005.png", [{"xyxy": [2, 2, 8, 8], "name": "cow"}]]]
    return {
        "VOCtrainval_06-Nov-2007.tar": archive,
        "voc07_train.json": json.dumps(entry).encode(),
        "voc07_val.json": json.dumps(entry).encode(),
    }


class FakeFetch:
    def __init__(self, payloads):
        self.by_url = {f"https://example.invalid/{name}": data for name, data in payloads.items()}
        self.calls = []

    def __call__(self, url, destination):
        self.calls.append(url)
        destination.write_bytes(self.by_url[url])


def spec_table(payloads, digests=None, extract_name="VOCtrainval_06-Nov-2007.tar"):
    digests = digests or {}
    return [
        RemoteFile(name, f"https://example.invalid/{name}", digests.get(name), name == extract_name)
        for name in payloads
    ]


def sha(data):
    return hashlib.sha256(data).hexdigest()


def test_download_verifies_extracts_and_is_idempotent(tmp_path, monkeypatch):
    payloads = course_payloads()
    files = spec_table(payloads, {n: sha(d) for n, d in payloads.items()})
    fetch = FakeFetch(payloads)
    digests = download_voc2007_tiny(tmp_path, files=files, fetch=fetch)
    assert digests == {n: sha(d) for n, d in payloads.items()}
    assert len(fetch.calls) == 3
    assert (tmp_path / JPEG_DIR / "000005.png").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".extract-")]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    extracted = []
    monkeypatch.setattr(download_module, "safe_extract_tar", lambda *a: extracted.append(a))
    download_voc2007_tiny(tmp_path, files=files, fetch=fetch)
    assert len(fetch.calls) == 3 and extracted == []  # nothing fetched, nothing extracted


def test_dataset_download_true_end_to_end(tmp_path, monkeypatch):
    payloads = course_payloads()
    files = tuple(spec_table(payloads, {n: sha(d) for n, d in payloads.items()}))
    fetch = FakeFetch(payloads)
    monkeypatch.setattr(download_module, "VOC2007_TINY_FILES", files)
    monkeypatch.setattr(download_module, "_fetch_url", fetch)
    dataset = VOC2007DetectionTiny(tmp_path / "voc", "val", image_size=10, download=True)
    _, image, gt = dataset[0]
    # 20x10 image at 10: scale 1, crop left 5: cow [2,2,8,8] -> [0 (clamped), 2, 3, 8].
    assert gt[0].tolist() == [0, 2, 3, 8, VOC_CLASSES.index("cow")]
    assert image.shape == (3, 10, 10) and len(fetch.calls) == 3


def test_download_checksum_mismatch_leaves_no_file(tmp_path):
    payloads = course_payloads()
    digests = {n: sha(d) for n, d in payloads.items()} | {"voc07_train.json": "0" * 64}
    files = spec_table(payloads, digests)
    match = r"voc07_train.json has sha256 [0-9a-f]{64}, expected 0{64} \(the digest pinned .*"
    with pytest.raises(ChecksumError, match=match + r"Delete it and run again"):
        download_voc2007_tiny(tmp_path, files=files, fetch=FakeFetch(payloads))
    assert not (tmp_path / "voc07_train.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_download_unknown_digest_is_recorded_and_then_enforced(tmp_path):
    payloads = course_payloads()
    files = spec_table(payloads)  # no pinned digests, as in the shipped table
    with pytest.warns(UnverifiedDownloadWarning) as record:
        download_voc2007_tiny(tmp_path, files=files, fetch=FakeFetch(payloads))
    messages = " ".join(str(w.message) for w in record)
    assert sha(payloads["voc07_train.json"]) in messages
    manifest = json.loads((tmp_path / "detops_download.json").read_text())
    assert manifest["voc07_val.json"]["sha256"] == sha(payloads["voc07_val.json"])
    assert manifest["voc07_val.json"]["pinned"] is False

    (tmp_path / "voc07_val.json").write_text("[]")  # changed behind our back
    with pytest.raises(ChecksumError, match=r"voc07_val.json .*recorded in .*detops_download.json"):
        download_voc2007_tiny(tmp_path, files=files, fetch=FakeFetch(payloads))


def test_archive_md5_note_in_warning(tmp_path):
    payloads = {"VOCtrainval_06-Nov-2007.tar": course_payloads()["VOCtrainval_06-Nov-2007.tar"]}
    files = [
        RemoteFile(
            "VOCtrainval_06-Nov-2007.tar",
            "https://example.invalid/VOCtrainval_06-Nov-2007.tar",
            extract=True,
            reference_md5=download_module.OFFICIAL_VOC2007_TRAINVAL_MD5,
        )
    ]
    with pytest.warns(
        UnverifiedDownloadWarning, match=r"does NOT match torchvision's published MD5"
    ):
        download_voc2007_tiny(tmp_path, files=files, fetch=FakeFetch(payloads))


def test_download_failure_says_what_to_do(tmp_path):
    def offline(url, destination):
        raise OSError("network is unreachable")

    files = spec_table({"voc07_train.json": b""})
    with pytest.raises(RuntimeError, match=r"could not download .*place it at .*voc07_train.json"):
        download_voc2007_tiny(tmp_path, files=files, fetch=offline)
    assert list(tmp_path.iterdir()) == []


def _symlink_out(info):
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"


def _hardlink_out(info):
    info.type = tarfile.LNKTYPE
    info.linkname = "../../outside.txt"


def _device(info):
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3


@pytest.mark.parametrize(
    "evil",
    [
        {"../evil.txt": b"x"},
        {"/tmp/detops-evil-absolute.txt": b"x"},
        {"VOCdevkit/../../evil.txt": b"x"},
        {"VOCdevkit/link": _symlink_out},
        {"VOCdevkit/hard": _hardlink_out},
        {"VOCdevkit/dev": _device},
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "symlink-out", "hardlink-out", "device"],
)
@pytest.mark.parametrize("filters", [True, False], ids=["pep706-filter", "own-checks"])
def test_safe_extract_refuses_unsafe_members_and_writes_nothing(
    tmp_path, evil, filters, monkeypatch
):
    # Pythons before 3.10.12 / 3.11.4 have no tarfile.data_filter: the same rules are
    # checked by detops itself there (forced here by hiding the filter).
    if not filters:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile extraction filters (PEP 706)")
    archive = tmp_path / "a.tar"
    archive.write_bytes(make_tar({"VOCdevkit/ok.txt": b"fine", **evil}))
    destination = tmp_path / "dest"
    with pytest.raises(ValueError, match=r"safe_extract_tar: refusing to extract .*unsafe"):
        safe_extract_tar(archive, destination)
    assert list(destination.iterdir()) == []  # not even the safe member
    assert not (tmp_path / "evil.txt").exists()
    assert not os.path.exists("/tmp/detops-evil-absolute.txt")


def test_download_refuses_malicious_archive(tmp_path):
    payloads = {"VOCtrainval_06-Nov-2007.tar": make_tar({"../../evil.txt": b"x"})}
    files = spec_table(payloads, {n: sha(d) for n, d in payloads.items()})
    with pytest.raises(ValueError, match="refusing to extract"):
        download_voc2007_tiny(tmp_path / "d", files=files, fetch=FakeFetch(payloads))
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()
    assert not (tmp_path / "d" / ".VOCtrainval_06-Nov-2007.tar.extracted").exists()
