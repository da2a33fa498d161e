import numpy as np
import pytest
import torch
from PIL import Image

from detops.data import IMAGENET_MEAN, IMAGENET_STD
from detops.visualize import (
    GT_COLOR,
    LEGEND_HEIGHT,
    PALETTE,
    detection_grid,
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
        min_side=None,
    )
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    with Image.open(path) as png:  # GT given: a legend strip under the image
        assert png.format == "PNG" and png.size == (W, H + LEGEND_HEIGHT) and png.mode == "RGB"
    pixels = read_png(path)
    assert pixels.shape == (3, H + LEGEND_HEIGHT, W)
    # The prediction's left border (x = 10, below its tag) has class 1's colour; the GT's
    # right border (x = 55) is dashed: white on some rows, black (its edge) or grey between.
    assert pixels[:, 20, 10].tolist() == list(PALETTE[1])
    column = pixels[:, 10:36, 55].T.tolist()
    assert list(GT_COLOR) in column and [100, 100, 100] in column  # dashes and their gaps
    assert pixels[:, 38, 2].tolist() == [100, 100, 100]
    assert torch.equal(image, before)  # input not modified


def test_small_images_are_upscaled_by_a_whole_factor():
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    image[:, 10:20, 30:40] = 200
    out = draw_detections(image)  # nothing to draw: only the upscale
    assert out.shape == (3, 320, 320)  # 5 x 64 reaches the default min side 320
    assert torch.equal(out[:, ::5, ::5], image)
    assert draw_detections(image, min_side=None).shape == (3, 64, 64)
    big = torch.zeros(3, 400, 500, dtype=torch.uint8)
    assert draw_detections(big).shape == (3, 400, 500)


def test_upscaling_stops_where_the_longer_side_would_pass_4096_px():
    """A 1 x 4000 strip would need a factor of 320 (1,280,000 px, more than PIL opens)."""
    assert draw_detections(torch.zeros(3, 1, 4000, dtype=torch.uint8)).shape == (3, 1, 4000)
    assert draw_detections(torch.zeros(3, 10, 1000, dtype=torch.uint8)).shape == (3, 40, 4000)
    assert draw_detections(torch.zeros(3, 5000, 2, dtype=torch.uint8)).shape == (3, 5000, 2)


def _tag_rows(out: torch.Tensor, color) -> torch.Tensor:
    """Rows holding a run of at least 8 pixels of the tag colour (a filled tag)."""
    match = (out == torch.tensor(color, dtype=torch.uint8).view(3, 1, 1)).all(0)
    runs = match.unfold(1, 8, 1).all(-1).any(-1)
    return runs.nonzero().flatten()


def test_labels_have_a_filled_background_inside_the_image_without_overlap():
    # Three overlapping boxes at the right edge of a small image: their tags must stay
    # inside the image and not cover one another.
    boxes = torch.tensor([[44.0, 2, 63, 30], [45.0, 3, 63, 31], [46.0, 4, 63, 32]])
    out = draw_detections(
        torch.full((3, 64, 64), 100, dtype=torch.uint8),
        boxes=boxes,
        labels=torch.tensor([0, 1, 2]),
        scores=torch.tensor([0.9, 0.8, 0.7]),
        class_names=["square", "circle", "triangle"],
    )
    assert out.shape == (3, 320, 320)
    spans = []
    for label in range(3):
        rows = _tag_rows(out, PALETTE[label])
        assert rows.numel() >= 10, f"no filled tag for class {label}"
        # the tag is a rectangle of rows; the box's own border gives at most 2 more rows
        spans.append((int(rows.min()), int(rows.max())))
    # Each tag's text fits inside the image: the tag's columns end before the right edge.
    match = (out == torch.tensor(PALETTE[0], dtype=torch.uint8).view(3, 1, 1)).all(0)
    assert match[:, -1].sum() < 40  # only the box border may touch the last column
    # No two tags share a row band (they were stacked, not drawn over each other).
    for label in range(3):
        rows = set(_tag_rows(out, PALETTE[label]).tolist())
        others = set()
        for other in range(3):
            if other != label:
                others |= set(_tag_rows(out, PALETTE[other]).tolist())
        assert len(rows - others) >= 8


def test_detection_grid_puts_panels_on_one_page(tmp_path):
    panels = [torch.full((3, 30, 40), v, dtype=torch.uint8) for v in (10, 20, 30, 40, 50)]
    panels.append(torch.full((3, 20, 20), 60, dtype=torch.uint8))  # smaller: padded
    grid = detection_grid(panels, columns=4, padding=2)
    # 2 rows of up to 4 panels of 30 x 40, with 2 px padding around each
    assert grid.shape == (3, 2 + 2 * 32, 2 + 4 * 42) and grid.dtype == torch.uint8
    assert grid[:, 2, 2].tolist() == [10] * 3 and grid[:, 34, 2].tolist() == [50] * 3
    with pytest.raises(ValueError, match="detection_grid: panels must hold at least one"):
        detection_grid([])


def test_text_is_drawn():
    plain = draw_detections(grey(), boxes=torch.tensor([[5.0, 15.0, 50.0, 35.0]]))
    assert plain.shape == (3, H * 8, W * 8)  # 40 px: upscaled 8x to reach 320
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
        labels=torch.tensor([0]), score_threshold=0.5, min_side=None,
    )  # fmt: skip
    assert torch.equal(out, image)
    out = draw_detections(
        image, boxes=torch.zeros(0, 4), gt_boxes=torch.full((3, 5), -1.0), legend=False,
        min_side=None,
    )  # fmt: skip
    assert torch.equal(out, image)


def test_float_and_normalized_images(tmp_path):
    out = draw_detections(
        torch.full((3, H, W), 0.5), gt_boxes=torch.tensor([[1.0, 1, 9, 9]]), min_side=None
    )
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
    out = draw_detections(grey(), boxes=torch.tensor([[-20.0, -20.0, 500.0, 500.0]]), min_side=None)
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


def test_save_png_refuses_another_extension(tmp_path):
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"save_png: path must end in \.png, got '.*x\.jpg'"):
        save_png(image, tmp_path / "x.jpg")
    assert list(tmp_path.iterdir()) == []
    assert save_png(image, tmp_path / "y.PNG").read_bytes()[:4] == b"\x89PNG"
