"""detops.nn: the backbone, the head and FCOS are thin wrappers over the ops.

Small inputs throughout (64 px, 16 channels): RegNetX-400MF itself cannot be shrunk, but at
64 px a forward pass takes tens of milliseconds.
"""

from __future__ import annotations

import copy
import math
import urllib.error

import pytest
import torch
from torchvision.models import RegNet_X_400MF_Weights, regnet_x_400mf

from detops.deltas import fcos_get_deltas_from_locations
from detops.inference import FCOSDetections, fcos_inference
from detops.locations import get_fpn_location_coords
from detops.losses import fcos_loss
from detops.matching import fcos_match_locations_to_gt
from detops.nn import FCOS, DetectorBackboneWithFPN, FCOSPredictionNetwork

STRIDES = {"p3": 8, "p4": 16, "p5": 32}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shared_fcos():
    torch.manual_seed(0)
    model = FCOS(num_classes=4, fpn_channels=16, stem_channels=[16, 16])
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def tiny_fcos(shared_fcos):
    """A freshly initialized tiny FCOS (building one traces the backbone: about a second)."""
    model, initial = shared_fcos
    model.load_state_dict(initial)
    return model.train()


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return DetectorBackboneWithFPN(16)


def batch(seed: int = 0, size: int = 64):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, size, size, generator=gen)
    # Image 0: two boxes and padding; image 1: one box (no padding rows beyond the shape).
    gt = torch.tensor(
        [
            [[4.0, 6.0, 30.0, 40.0, 1.0], [30.0, 20.0, 60.0, 50.0, 3.0], [-1, -1, -1, -1, -1]],
            [[10.0, 10.0, 50.0, 44.0, 0.0], [-1, -1, -1, -1, -1], [-1, -1, -1, -1, -1]],
        ]
    )
    return images, gt


def cat_levels(per_level):
    return torch.cat(list(per_level.values()), dim=1)


# ----------------------------------------------------------------------------- backbone


@pytest.mark.parametrize("height, width", [(64, 64), (100, 132), (97, 61)])
def test_backbone_levels_channels_and_sizes(backbone, height, width):
    assert backbone.fpn_strides == STRIDES
    feats = backbone(torch.randn(1, 3, height, width))
    assert list(feats) == ["p3", "p4", "p5"]
    for level, stride in STRIDES.items():
        # The trunk's stride-2 convs (kernel 3, padding 1) give ceil(n / 2) at every halving.
        expected = (math.ceil(height / stride), math.ceil(width / stride))
        assert feats[level].shape == (1, 16, *expected), level


def test_trunk_channels_are_64_160_400(backbone):
    with torch.no_grad():
        trunk = backbone.backbone(torch.randn(1, 3, 64, 64))
    assert {k: v.shape[1] for k, v in trunk.items()} == {"c3": 64, "c4": 160, "c5": 400}
    assert [backbone.lateral[p].in_channels for p in ("p3", "p4", "p5")] == [64, 160, 400]
    assert all(backbone.output[p].kernel_size == (3, 3) for p in ("p3", "p4", "p5"))
    assert all(backbone.output[p].padding == (1, 1) for p in ("p3", "p4", "p5"))


def test_fpn_top_down_path_is_nearest_2x_upsampling(backbone):
    backbone.eval()
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        feats = backbone(images)
        c = backbone.backbone(images)
        lat = {p: backbone.lateral[p](c[k]) for k, p in (("c3", "p3"), ("c4", "p4"), ("c5", "p5"))}

        # Nearest 2x upsampling written independently: every cell becomes a 2x2 block.
        def up(x):
            return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)

        m5 = lat["p5"]
        m4 = lat["p4"] + up(m5)
        m3 = lat["p3"] + up(m4)
        expected = {"p3": m3, "p4": m4, "p5": m5}
    for level, merged in expected.items():
        torch.testing.assert_close(feats[level], backbone.output[level](merged), rtol=0, atol=0)


def test_backbone_loads_a_local_state_dict(tmp_path):
    torch.manual_seed(1)
    source = regnet_x_400mf()
    path = tmp_path / "regnet.pth"
    torch.save(source.state_dict(), path)
    backbone = DetectorBackboneWithFPN(8, weights=str(path))
    loaded = backbone.backbone.state_dict()
    for name, value in source.state_dict().items():
        if name in loaded:
            assert torch.equal(loaded[name], value), name
    assert torch.equal(loaded["stem.0.weight"], source.state_dict()["stem.0.weight"])


def test_failed_weight_download_says_what_to_do(monkeypatch):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    for weights in (RegNet_X_400MF_Weights.IMAGENET1K_V2, "IMAGENET1K_V1"):
        with pytest.raises(RuntimeError, match="could not download") as info:
            DetectorBackboneWithFPN(8, weights=weights)
        message = str(info.value)
        assert "pass its path" in message and "weights=None" in message
        assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_unknown_weights_name_is_rejected():
    with pytest.raises(FileNotFoundError, match="DetectorBackboneWithFPN: weights must be None"):
        DetectorBackboneWithFPN(8, weights="no_such_file.pth")
    with pytest.raises(ValueError, match="out_channels must be > 0"):
        DetectorBackboneWithFPN(0)


# ----------------------------------------------------------------------------- head


def test_head_initialization():
    head = FCOSPredictionNetwork(num_classes=5, in_channels=32, stem_channels=[32, 16])
    assert len(head.stem_cls) == 4 and len(head.stem_box) == 4  # two conv + ReLU each
    assert torch.allclose(head.pred_cls.bias, torch.full((5,), -math.log(99)))
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 7
    for conv in convs:
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1)
        if conv is not head.pred_cls:
            assert torch.count_nonzero(conv.bias) == 0
    weights = torch.cat([c.weight.flatten() for c in convs])
    # 32*32*9 + 32*16*9 (x2) + 16*(5+4+1)*9 = 27 072 draws: the sample std is within 2%.
    assert abs(weights.std().item() - 0.01) < 2e-4 and abs(weights.mean().item()) < 2e-4
    # sigmoid(-log 99) = 1 / (1 + 99) = 0.01, the focal loss paper's prior.
    assert torch.sigmoid(head.pred_cls.bias[0]).item() == pytest.approx(0.01)


def test_head_rows_follow_get_fpn_location_coords_order():
    torch.manual_seed(0)
    head = FCOSPredictionNetwork(num_classes=3, in_channels=8, stem_channels=8)
    feats = {"p3": torch.randn(2, 8, 5, 7), "p4": torch.randn(2, 8, 3, 4)}
    cls, box, ctr = head(feats)
    for level, feat in feats.items():
        height, width = feat.shape[-2:]
        dense_cls = head.pred_cls(head.stem_cls(feat))
        dense_box = head.pred_box(head.stem_box(feat))
        dense_ctr = head.pred_ctr(head.stem_box(feat))
        assert cls[level].shape == (2, height * width, 3)
        assert box[level].shape == (2, height * width, 4)
        assert ctr[level].shape == (2, height * width, 1)
        locations = get_fpn_location_coords({level: feat.shape}, {level: 8})[level]
        for k in (0, 1, width, height * width - 1):
            # Row k is cell (h, w) whose centre is location k: x = 8 (w + 0.5).
            h, w = k // width, k % width
            assert locations[k].tolist() == [8 * (w + 0.5), 8 * (h + 0.5)]
            assert torch.equal(cls[level][:, k], dense_cls[:, :, h, w])
            assert torch.equal(box[level][:, k], dense_box[:, :, h, w])
            assert torch.equal(ctr[level][:, k], dense_ctr[:, :, h, w])


def test_centerness_comes_from_the_box_stem():
    torch.manual_seed(0)
    head = FCOSPredictionNetwork(num_classes=2, in_channels=4, stem_channels=[4])
    feats = {"p3": torch.randn(1, 4, 3, 3)}
    _, _, before = head(feats)
    with torch.no_grad():
        head.stem_cls[0].weight.add_(1.0)
    _, _, after_cls = head(feats)
    assert torch.equal(before["p3"], after_cls["p3"])
    with torch.no_grad():
        head.stem_box[0].weight.add_(1.0)
    _, _, after_box = head(feats)
    assert not torch.equal(before["p3"], after_box["p3"])


# ----------------------------------------------------------------------------- FCOS


def test_training_forward_is_exactly_the_ops(tiny_fcos):
    model = tiny_fcos
    images, gt = batch()
    normalizer = model.loss_normalizer.clone()
    losses = model(images, gt)

    # The same computation by hand, from the ops, on the same tensors. BatchNorm in train
    # mode normalizes with batch statistics, so a second forward gives the same features.
    feats = model.backbone(images)
    cls, box, ctr = model.pred_net(feats)
    locations = get_fpn_location_coords({k: v.shape for k, v in feats.items()}, STRIDES)
    matched = fcos_match_locations_to_gt(locations, STRIDES, gt)
    deltas = {
        k: fcos_get_deltas_from_locations(locations[k], matched[k], STRIDES[k]) for k in matched
    }
    expected, expected_normalizer = fcos_loss(
        cat_levels(cls), cat_levels(box), cat_levels(ctr),
        cat_levels(matched), cat_levels(deltas), normalizer, momentum=0.9,
    )  # fmt: skip
    assert set(losses) == {"loss_cls", "loss_box", "loss_ctr"}
    for name, value in expected.items():
        assert torch.equal(losses[name], value), name
    assert torch.equal(model.loss_normalizer, torch.as_tensor(expected_normalizer).float())
    assert not torch.equal(model.loss_normalizer, normalizer)


def test_eval_forward_is_exactly_fcos_inference(tiny_fcos):
    model = tiny_fcos.eval()
    images, _ = batch()
    with torch.no_grad():
        # Lower the class bias so a random-init model produces some detections to compare.
        model.pred_net.pred_cls.bias.fill_(2.0)
        detections = model(images, test_score_thresh=0.2, test_nms_thresh=0.6)
        feats = model.backbone(images)
        cls, box, ctr = model.pred_net(feats)
        locations = get_fpn_location_coords({k: v.shape for k, v in feats.items()}, STRIDES)
        expected = fcos_inference(locations, STRIDES, cls, box, ctr, (64, 64), 0.2, 0.6)
    assert isinstance(detections, FCOSDetections)
    assert int(detections.counts.sum()) > 0 and detections.boxes.shape[0] == 2
    for name in FCOSDetections._fields:
        assert torch.equal(getattr(detections, name), getattr(expected, name)), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_eval_forward_in_half_precision(tiny_fcos, dtype):
    # The module builds its locations in the images' dtype; its scores are computed in
    # float32. This raised "scores must have the dtype of boxes" before.
    model = copy.deepcopy(tiny_fcos).to(dtype).eval()
    images = batch()[0].to(dtype)
    with torch.no_grad():
        model.pred_net.pred_cls.bias.fill_(2.0)
        detections = model(images, test_score_thresh=0.2, test_nms_thresh=0.6)
        feats = model.backbone(images)
        cls, box, ctr = model.pred_net(feats)
        shapes = {k: v.shape for k, v in feats.items()}
        locations = get_fpn_location_coords(shapes, STRIDES, dtype=dtype)
        expected = fcos_inference(locations, STRIDES, cls, box, ctr, (64, 64), 0.2, 0.6)
    assert detections.boxes.dtype == detections.scores.dtype == dtype
    assert int(detections.counts.sum()) > 0
    for name in FCOSDetections._fields:
        assert torch.equal(getattr(detections, name), getattr(expected, name)), name


def test_eval_default_thresholds_are_the_seeds(tiny_fcos):
    model = tiny_fcos
    assert (model.score_thresh, model.nms_thresh) == (0.3, 0.5)


def test_normalizer_is_a_buffer_that_round_trips_through_state_dict(tiny_fcos):
    model = tiny_fcos
    assert "loss_normalizer" in dict(model.named_buffers())
    assert model.loss_normalizer.item() == 150.0  # the seed's start value
    images, gt = batch()
    model(images, gt)
    trained = model.loss_normalizer.clone()
    assert trained.item() != 150.0
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.loss_normalizer.fill_(150.0)
    model.load_state_dict(state)
    assert torch.equal(model.loss_normalizer, trained)


@pytest.mark.parametrize(
    "row, message",
    [
        ([float("nan"), 0.0, 10.0, 10.0, 1.0], "must not contain NaN"),
        ([0.0, 0.0, float("inf"), 10.0, 1.0], "must not contain NaN or inf"),
        ([20.0, 0.0, 10.0, 10.0, 1.0], "inverted box"),
        ([0.0, 20.0, 10.0, 10.0, 1.0], "inverted box"),
        ([0.0, 0.0, 10.0, 10.0, 4.0], r"classes must be integers in \[0, 4\)"),
        ([0.0, 0.0, 10.0, 10.0, 1.5], r"classes must be integers in \[0, 4\)"),
    ],
)
def test_bad_gt_boxes_raise_before_any_work(tiny_fcos, row, message, monkeypatch):
    model = tiny_fcos
    images, gt = batch()
    gt[1, 1] = torch.tensor(row)

    def no_work(*args, **kwargs):
        raise AssertionError("the backbone ran before the input check")

    monkeypatch.setattr(model.backbone, "forward", no_work)
    before = model.loss_normalizer.clone()
    with pytest.raises(ValueError, match=f"FCOS: gt_boxes .*{message}|FCOS: .*{message}"):
        model(images, gt)
    assert torch.equal(model.loss_normalizer, before)


def test_gt_shape_and_missing_gt_errors(tiny_fcos):
    model = tiny_fcos
    images, gt = batch()
    with pytest.raises(ValueError, match=r"gt_boxes must have shape \[B, N, 5\] with B = 2"):
        model(images, gt[:1])
    with pytest.raises(ValueError, match="gt_boxes is required in training mode"):
        model(images)
    with pytest.raises(TypeError, match="gt_boxes must be a floating tensor"):
        model(images, gt.long())


SHAPE = r"images must have shape \[B, 3, H, W\]"
FLOATING = r"images must be a floating tensor \[B, 3, H, W\]"
DTYPE = r"images must have the model's dtype torch.float32 \(images.to\(torch.float32\), or run"
BAD_IMAGES = [
    (torch.zeros(2, 1, 64, 64), ValueError, SHAPE + r".*got \[2, 1, 64, 64\]"),
    (torch.zeros(3, 64, 64), ValueError, SHAPE + r".*got \[3, 64, 64\]"),
    (torch.zeros(2, 3, 64, 64, dtype=torch.uint8), TypeError, FLOATING + ".*got torch.uint8"),
    (torch.zeros(2, 3, 64, 64, dtype=torch.int64), TypeError, FLOATING + ".*got torch.int64"),
    ([[0.0]], TypeError, r"images must be a torch.Tensor, got list"),
    (torch.zeros(2, 3, 64, 64, dtype=torch.float16), TypeError, DTYPE + ".*got torch.float16"),
    (torch.zeros(2, 3, 64, 64, dtype=torch.float64), TypeError, DTYPE + ".*got torch.float64"),
]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(("images", "error", "message"), BAD_IMAGES)
def test_bad_images_name_fcos_the_argument_and_what_was_given(
    tiny_fcos, training, images, error, message
):
    model = tiny_fcos.train(training)
    _, gt = batch()
    with pytest.raises(error, match=f"^FCOS: {message}"):
        model(images, gt if training else None)


@pytest.mark.parametrize(("images", "error", "message"), BAD_IMAGES)
def test_bad_images_name_the_backbone(backbone, images, error, message):
    with pytest.raises(error, match=f"^DetectorBackboneWithFPN: {message}"):
        backbone(images)


@pytest.mark.parametrize("training", [True, False])
def test_an_empty_batch_is_refused_by_name(tiny_fcos, training):
    model = tiny_fcos.train(training)
    with pytest.raises(ValueError, match=r"^FCOS: images must hold at least one image"):
        model(torch.zeros(0, 3, 64, 64), torch.zeros(0, 3, 5) if training else None)


def test_other_floating_images_run_under_autocast(tiny_fcos):
    # Autocast casts for the convolutions: its images need not have the model's dtype.
    model = tiny_fcos.eval()
    images, _ = batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images.bfloat16())
    assert out.boxes.shape[0] == 2


def test_empty_gt_gives_finite_losses(tiny_fcos):
    # FCOS issues #190/#312: the original crashed on images without boxes.
    model = tiny_fcos
    images, _ = batch()
    losses = model(images, torch.full((2, 3, 5), -1.0))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box"].item() == 0.0 and losses["loss_ctr"].item() == 0.0
