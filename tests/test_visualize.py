import numpy as np
import pytest
import torch
from PIL import Image

from detops.data import IMAGENET_MEAN, IMAGENET_STD
from detops.visualize import (
    GT_COLOR,
    PALETTE,
    draw_detections,
    save_detections_png,
    save_png,
    unnormalize_image,
)

H, W = 40, 60


def read_png(path):
    with Image.open(path) as png:
        return torch.from_numpy(np.asarray(png.convert("RGB")).copy()).permute(2, 0, 1)


def grey():
    return torch.full((3, H, W), 100, dtype=torch.uint8)


def test_saves_a_valid_png_with_boxes_on_their_borders(tmp_path):
    image = grey()
    before = image.clone()
    path = save_detections_png(
        tmp_path / "sub" / "out.png",
        image,
        boxes=torch.tensor([[10.0, 5.0, 30.0, 25.0]]),
        labels=torch.tensor([1]),
        scores=torch.tensor([0.87]),
        gt_boxes=torch.tensor([[35.0, 10.0, 55.0, 35.0, 0.0], [-1, -1, -1, -1, -1]]),
        class_names=["cat", "dog"],
    )
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (W, H) and png.mode == "RGB"
    pixels = read_png(path)
    assert pixels.shape == (3, H, W)
    # The prediction's left border (x = 10, below the label strip) has class 1's colour,
    # the GT's right border (x = 55) is green; the middle of the image is untouched grey.
    assert pixels[:, 20, 10].tolist() == list(PALETTE[1])
    assert pixels[:, 30, 55].tolist() == list(GT_COLOR)
    assert pixels[:, 38, 2].tolist() == [100, 100, 100]
    assert torch.equal(image, before)  # input not modified


def test_text_is_drawn():
    plain = draw_detections(grey(), boxes=torch.tensor([[5.0, 15.0, 50.0, 35.0]]))
    labelled = draw_detections(
        grey(),
        boxes=torch.tensor([[5.0, 15.0, 50.0, 35.0]]),
        labels=torch.tensor([0]),
        scores=torch.tensor([0.5]),
        class_names=["person"],
    )
    assert not torch.equal(plain, labelled)


def test_score_threshold_and_empty_inputs():
    image = grey()
    out = draw_detections(
        image, boxes=torch.tensor([[5.0, 5.0, 20.0, 20.0]]), scores=torch.tensor([0.1]),
        labels=torch.tensor([0]), score_threshold=0.5,
    )  # fmt: skip
    assert torch.equal(out, image)
    out = draw_detections(image, boxes=torch.zeros(0, 4), gt_boxes=torch.full((3, 5), -1.0))
    assert torch.equal(out, image)


def test_float_and_normalized_images(tmp_path):
    out = draw_detections(torch.full((3, H, W), 0.5), gt_boxes=torch.tensor([[1.0, 1, 9, 9]]))
    assert out.dtype == torch.uint8 and out[:, 30, 30].tolist() == [128, 128, 128]
    # 0.2 normalized is (0.2 - 0.485) / 0.229 = -1.24 (red channel): not a [0, 1] image.
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    normalized = (torch.full((3, H, W), 0.2) - mean) / std
    with pytest.raises(ValueError, match=r"draw_detections: .*call unnormalize_image first"):
        draw_detections(normalized)
    restored = unnormalize_image(normalized)
    assert restored.dtype == torch.uint8 and restored[:, 0, 0].tolist() == [51, 51, 51]
    path = save_png(restored, tmp_path / "r.png")
    assert torch.equal(read_png(path), restored)


def test_boxes_outside_the_image_are_clamped():
    out = draw_detections(grey(), boxes=torch.tensor([[-20.0, -20.0, 500.0, 500.0]]))
    assert out[:, H - 1, W // 2].tolist() == list(PALETTE[0])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"boxes": torch.zeros(2, 5)}, ValueError, r"boxes must have shape \[N, 4\]"),
        ({"boxes": torch.tensor([[5.0, 5, 1, 9]])}, ValueError,
         r"boxes must be XYXY .*x1 <= x2.*got 1 row"),
        ({"boxes": torch.zeros(2, 4), "labels": torch.zeros(3)}, ValueError,
         r"labels must have shape \[2\]"),
        ({"gt_boxes": torch.zeros(1, 5), "gt_labels": torch.zeros(1)}, ValueError,
         r"gt_labels must be None"),
    ],
)  # fmt: skip
def test_error_inputs(kwargs, error, match):
    with pytest.raises(error, match=r"draw_detections: " + match):
        draw_detections(grey(), **kwargs)


def test_bad_image():
    with pytest.raises(ValueError, match=r"draw_detections: image must have shape \[3, H, W\]"):
        draw_detections(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"save_png: image must be uint8 or floating"):
        save_png(torch.zeros(3, 4, 4, dtype=torch.int32), "never-written.png")
