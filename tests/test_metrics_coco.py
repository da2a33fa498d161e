"""protocol="coco": detops against pycocotools' COCOeval directly, and hand cases.

The comparison with the NumPy reference runs in tests/test_against_reference.py (registry
entry ``mean_average_precision_coco`` in detops/testing/families/metrics.py).
"""

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from detops import mean_average_precision
from detops.metrics import COCO_AREA_RANGES, COCO_MAX_DETECTIONS, COCO_RECALL_THRESHOLDS
from detops.testing.entry import case_to_torch
from detops.testing.families.metrics import coco_map_cases

STAT_KEYS = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)
PYCOCO_TOL = 1e-9  # the bar; seen: a few 1e-16
ONE = pytest.approx(1.0, abs=1e-12)  # COCOeval's precision is tp / (tp + fp + eps)


def det(boxes, labels, scores):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float64),
    }


def gt(boxes, labels, **extra):
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
    out.update({k: torch.tensor(v) for k, v in extra.items()})
    return out


def coco_eval(detections, ground_truths, num_classes):
    """pycocotools' COCOeval on the same sets (XYXY -> XYWH in float64, ids from 1).

    Returns (stats [12], precision [10, 101, C, 4, 3], recall [10, C, 4, 3])."""
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": i + 1} for i in range(len(ground_truths))]
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]
    annotations, results = [], []
    for i, g in enumerate(ground_truths):
        boxes = np.asarray(g["boxes"], dtype=np.float64).reshape(-1, 4)
        for j, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(g["labels"][j]) + 1,
                    "bbox": [x1, y1, w, h],
                    "area": float(g["area"][j]) if "area" in g else w * h,
                    "iscrowd": int(g["iscrowd"][j]) if "iscrowd" in g else 0,
                }
            )
    for i, d in enumerate(detections):
        boxes = np.asarray(d["boxes"], dtype=np.float64).reshape(-1, 4)
        for j, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            w, h = x2 - x1, y2 - y1
            # What COCO.loadRes makes of a bbox result (it cannot take an empty list).
            results.append(
                {
                    "id": len(results) + 1,
                    "image_id": i + 1,
                    "category_id": int(d["labels"][j]) + 1,
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "score": float(d["scores"][j]),
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = {"images": images, "categories": categories, "annotations": annotations}
        coco_dt.dataset = {"images": images, "categories": categories, "annotations": results}
        coco_gt.createIndex()
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats, evaluator.eval["precision"], evaluator.eval["recall"]


def assert_same_as_cocoeval(out, detections, ground_truths, num_classes, context=""):
    stats, precision, recall = coco_eval(detections, ground_truths, num_classes)
    ours = np.array([out[k].item() for k in STAT_KEYS])
    diff = np.abs(ours - stats)
    assert diff.max() <= PYCOCO_TOL, (
        f"mean_average_precision(protocol='coco') vs COCOeval.stats on {context}: "
        f"expected {stats.tolist()}, got {ours.tolist()}"
    )
    for name, theirs in (("precision", precision), ("recall", recall)):
        mine = out[name].cpu().numpy()
        assert mine.shape == theirs.shape, f"{name}: shape {mine.shape} vs {theirs.shape}"
        worst = np.abs(mine - theirs).max() if mine.size else 0.0
        assert worst <= PYCOCO_TOL, f"{name} differs from COCOeval by {worst} on {context}"


@settings(max_examples=40)
@given(case=coco_map_cases())
def test_equals_pycocotools_on_generated_sets(case):
    detections, ground_truths, num_classes = case.args
    if not detections:
        return  # COCOeval needs at least one image; empty input is tested below
    tensors = case_to_torch(case.args, torch.float64, "cpu")
    out = mean_average_precision(*tensors, **case.kwargs)
    assert_same_as_cocoeval(out, detections, ground_truths, num_classes, context=str(case))


# --------------------------------------------------------------------------- hand cases
G10 = [0.0, 0.0, 10.0, 10.0]
MISS = [50.0, 50.0, 60.0, 60.0]


def test_tied_scores_keep_input_order():
    # The case: two GT; 0.9 hit, 0.9 miss, 0.8 hit. Recall 1/2 at precision 1,
    # recall 1 at 2/3: 51 of 101 recall points read 1, 50 read 2/3 (at every IoU).
    ground = [gt([G10, [20, 0, 30, 10]], [0, 0])]
    dets = [det([G10, MISS, [20, 0, 30, 10]], [0, 0, 0], [0.9, 0.9, 0.8])]
    out = mean_average_precision(dets, ground, 1, protocol="coco")
    assert out["map"].item() == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)
    assert out["map"].item() == pytest.approx(0.835, abs=1e-3)
    # Miss first: 0 at recall 0, then 1/2 and 2/3.
    swapped = [det([MISS, G10, [20, 0, 30, 10]], [0, 0, 0], [0.9, 0.9, 0.8])]
    out = mean_average_precision(swapped, ground, 1, protocol="coco")
    assert out["map"].item() == pytest.approx(2 / 3, abs=1e-12)
    assert_same_as_cocoeval(out, swapped, ground, 1)


def test_reassignment_to_the_next_free_gt():
    # g1 = [0,0,10,10], g2 = [4,0,14,10]; d1 = g1 takes g1; d2 = [1,0,11,10] has IoU 0.818
    # with g1 (taken) and 70/130 = 0.538 with g2: COCO takes g2 at IoU 0.5 (VOC would not).
    ground = [gt([G10, [4, 0, 14, 10]], [0, 0])]
    dets = [det([G10, [1, 0, 11, 10]], [0, 0], [0.9, 0.8])]
    out = mean_average_precision(dets, ground, 1, protocol="coco")
    assert out["map_50"].item() == 1.0
    assert mean_average_precision(dets, ground, 1)["map"].item() == pytest.approx(0.5)
    assert_same_as_cocoeval(out, dets, ground, 1)


def test_crowd_absorbs_detections_and_uses_detection_area():
    # A crowd region [0,0,100,100] and one GT. Three detections inside the crowd region
    # (IoU with it = their own area / their own area = 1) are ignored, not false positives.
    ground = [gt([[0, 0, 100, 100], [200, 200, 210, 210]], [0, 0], iscrowd=[1, 0])]
    dets = [
        det(
            [[10, 10, 20, 20], [30, 30, 40, 40], [200, 200, 210, 210], [50, 50, 60, 60]],
            [0, 0, 0, 0],
            [0.9, 0.8, 0.7, 0.6],
        )
    ]
    out = mean_average_precision(dets, ground, 1, protocol="coco")
    assert out["map"].item() == ONE and out["mar_100"].item() == 1.0
    assert_same_as_cocoeval(out, dets, ground, 1)


def test_max_detections_per_image_and_class():
    # 100 false positives above one true positive in one image: the TP is the 101st and is
    # never seen. In a second image the same TP is seen at maxDets 100 but not at 10.
    fps = [[300.0 + 2 * i, 300.0, 301.0 + 2 * i, 301.0] for i in range(100)]
    ground = [gt([G10], [0]), gt([G10], [0])]
    dets = [
        det([*fps, G10], [0] * 101, [0.9] * 100 + [0.5]),
        det([*fps[:20], G10], [0] * 21, [0.9] * 20 + [0.5]),
    ]
    out = mean_average_precision(dets, ground, 1, protocol="coco")
    assert out["mar_100"].item() == 0.5 and out["mar_10"].item() == 0.0
    assert_same_as_cocoeval(out, dets, ground, 1)


def test_area_ranges_and_absent_classes():
    # A 20x20 GT is small: map_medium and map_large have no GT anywhere -> -1. Class 1 is
    # seen only in detections: -1 per class and left out of the means.
    ground = [gt([[0, 0, 20, 20]], [0])]
    dets = [det([[0, 0, 20, 20], [0, 0, 50, 50]], [0, 1], [0.9, 0.8])]
    out = mean_average_precision(dets, ground, 2, protocol="coco")
    assert out["map"].item() == ONE and out["map_small"].item() == ONE
    assert out["map_medium"].item() == -1.0 and out["map_large"].item() == -1.0
    assert out["map_per_class"].tolist() == [ONE, -1.0]
    assert_same_as_cocoeval(out, dets, ground, 2)


def test_given_area_overrides_box_area():
    ground = [gt([[0, 0, 20, 20]], [0], area=[5000.0])]
    dets = [det([[0, 0, 20, 20]], [0], [0.9])]
    out = mean_average_precision(dets, ground, 1, protocol="coco")
    assert out["map_small"].item() == -1.0 and out["map_medium"].item() == ONE
    assert_same_as_cocoeval(out, dets, ground, 1)


def test_empty_inputs_give_minus_one():
    out = mean_average_precision([], [], 3, protocol="coco")
    assert all(out[k].item() == -1.0 for k in STAT_KEYS)
    assert out["precision"].shape == (10, 101, 3, 4, 3) and out["recall"].shape == (10, 3, 4, 3)
    out = mean_average_precision([det([], [], [])], [gt([], [])], 2, protocol="coco")
    assert all(out[k].item() == -1.0 for k in STAT_KEYS)
    # GT but no detection: 0, not -1.
    out = mean_average_precision([det([], [], [])], [gt([G10], [1])], 2, protocol="coco")
    assert out["map"].item() == 0.0 and out["map_per_class"].tolist() == [-1.0, 0.0]


def test_constants_are_cocoeval_params():
    pytest.importorskip("pycocotools")
    from pycocotools.cocoeval import Params

    params = Params(iouType="bbox")
    no_images = mean_average_precision([], [], 1, protocol="coco")
    assert no_images["iou_thresholds"].tolist() == params.iouThrs.tolist()
    assert list(COCO_RECALL_THRESHOLDS) == params.recThrs.tolist()
    assert [list(a) for a in COCO_AREA_RANGES] == [[float(v) for v in a] for a in params.areaRng]
    assert list(COCO_MAX_DETECTIONS) == params.maxDets


def test_dtype_device_and_inputs_untouched(device):
    ground = [{k: v.to(device) for k, v in gt([G10, [0, 0, 5, 5]], [0, 1], iscrowd=[0, 1]).items()}]
    dets = [
        {
            k: v.to(device).float() if v.is_floating_point() else v.to(device)
            for k, v in det([G10], [0], [0.5]).items()
        }
    ]
    copies = [{k: v.clone() for k, v in d.items()} for d in dets + ground]
    out = mean_average_precision(dets, ground, 2, protocol="coco")
    assert out["map"].dtype == torch.float64 and out["map"].device.type == device
    assert out["map"].item() == ONE
    for d, c in zip(dets + ground, copies, strict=True):
        assert all(torch.equal(d[k], c[k]) for k in d)


def test_many_images_match_pycocotools():
    # A larger random set (40 images, 3 classes, 0-120 detections each) in one go.
    rng = np.random.default_rng(7)
    detections, ground_truths = [], []
    for _ in range(40):
        num_gt = int(rng.integers(0, 6))
        xy = rng.integers(0, 200, (num_gt, 2)) * 1.0
        wh = rng.integers(2, 150, (num_gt, 2)) * 1.0
        boxes = np.concatenate([xy, xy + wh], 1).reshape(-1, 4)
        labels = rng.integers(0, 3, num_gt)
        count = int(rng.integers(0, 120))
        source = rng.integers(0, max(num_gt, 1), count)
        det_boxes = (boxes[source] if num_gt else np.full((count, 4), 5.0)) + rng.normal(
            0, 4, (count, 4)
        )
        det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
        det_labels = labels[source] if num_gt else rng.integers(0, 3, count)
        ground_truths.append(
            {"boxes": boxes, "labels": labels, "iscrowd": rng.random(num_gt) < 0.1}
        )
        detections.append(
            {"boxes": det_boxes, "labels": det_labels, "scores": rng.integers(0, 20, count) / 20}
        )
    tensors = case_to_torch((detections, ground_truths), torch.float64, "cpu")
    out = mean_average_precision(*tensors, 3, protocol="coco")
    assert_same_as_cocoeval(out, detections, ground_truths, 3)
    assert not math.isnan(out["map"].item())


GOOD_D, GOOD_G = det([G10], [0], [0.5]), gt([G10], [0])
ERROR_INPUTS = [
    ({"protocol": "COCO"}, ValueError, r"protocol must be one of \['voc', 'coco'\], got 'COCO'"),
    ({"protocol": "coco", "iou_threshold": 0.75}, ValueError, r"apply to protocol='voc' only"),
    (
        {"protocol": "coco", "iou_thresholds": (0.5,)},
        ValueError,
        r"apply to protocol='voc' only",
    ),
    ({"voc_plus_one": 1}, TypeError, r"voc_plus_one must be a bool, got int"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), ERROR_INPUTS)
def test_error_options(kwargs, error, match):
    with pytest.raises(error, match=r"mean_average_precision: .*" + match):
        mean_average_precision([GOOD_D], [GOOD_G], 1, **kwargs)


GT_ERRORS = [
    (
        GOOD_G | {"iscrowd": torch.tensor([0.0])},
        TypeError,
        r"ground_truths\[0\]\['iscrowd'\] must have an integer or bool dtype, got torch.float32",
    ),
    (
        GOOD_G | {"iscrowd": torch.tensor([0, 1])},
        ValueError,
        r"ground_truths\[0\]\['iscrowd'\] must have shape \[1\] \(one per box\), got \[2\]",
    ),
    (
        GOOD_G | {"area": torch.tensor([5])},
        TypeError,
        r"ground_truths\[0\]\['area'\] must have a floating dtype, got torch.int64",
    ),
    (
        GOOD_G | {"area": torch.tensor([float("nan")])},
        ValueError,
        r"ground_truths area must not contain NaN",
    ),
    (
        GOOD_G | {"area": [1.0]},
        TypeError,
        r"ground_truths\[0\]\['area'\] must be a torch.Tensor, got list",
    ),
]


@pytest.mark.parametrize(("ground", "error", "match"), GT_ERRORS)
def test_error_ground_truth_keys(ground, error, match):
    with pytest.raises(error, match=r"mean_average_precision: .*" + match):
        mean_average_precision([GOOD_D], [ground], 1, protocol="coco")


# ------------------------------------------------------------------ the evaluate command
# A 2-iteration training run on 64 px images (its data options come with each test).
_TINY_TRAIN = [
    "--image-size", "64", "--batch-size", "2", "--iterations", "2", "--fpn-channels", "8",
    "--stem-channels", "8", "--warmup-iterations", "0", "--no-progress", "--device", "cpu",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_evaluate_command_writes_table_json_and_curves(tmp_path, capsys):
    from detops.cli import main

    data = ["--data-dir", str(tmp_path / "data"), "--num-train", "4", "--num-val", "3"]
    assert main(["train", "--output-dir", str(tmp_path / "run"), *data, *_TINY_TRAIN]) == 0
    capsys.readouterr()
    out_dir = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt")]
    assert main([*argv, "--output-dir", str(out_dir), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "AP @[IoU=0.50:0.95 | area=   all | maxDets=100]" in printed
    assert "VOC devkit mAP@0.5" in printed
    report = json.loads((out_dir / "metrics.json").read_text())
    assert set(report["coco"]) == set(STAT_KEYS) and report["images"] == 3
    assert [c["class"] for c in report["per_class"]] == ["circle", "square", "triangle", "cross"]
    assert (out_dir / "pr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_command_usage_errors(tmp_path, capsys):
    from detops.cli import main

    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    (tmp_path / "ckpt.pt").write_bytes(b"")
    argv = ["evaluate", "--checkpoint", str(tmp_path / "ckpt.pt"), "--score-thresh", "2"]
    assert main(argv) == 2
    assert "--score-thresh must lie in [0, 1], got 2.0" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_evaluate_reads_the_data_the_checkpoint_was_trained_on(tmp_path, capsys, monkeypatch):
    """Without --data, evaluate scores the checkpoint's own --data folder (not the synthetic
    default); --data synthetic is refused before a set is written; a folder that has gone
    since is one line naming --data, exit 2."""
    from detops.cli import main
    from detops.data import make_synthetic_detection_dataset

    monkeypatch.chdir(tmp_path)  # where the synthetic default (data/synthetic) would go
    folder = tmp_path / "voc"
    make_synthetic_detection_dataset(folder, num_train=4, num_val=3, image_size=64)
    data = ["--data", str(folder), "--classes", "circle,square,triangle,cross"]
    assert main(["train", "--output-dir", str(tmp_path / "run"), *data, *_TINY_TRAIN]) == 0
    capsys.readouterr()
    argv = ["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt")]
    argv += ["--output-dir", str(tmp_path / "eval"), "--device", "cpu"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["data"] == str(folder.resolve()) and report["images"] == 3
    assert not (tmp_path / "data").exists()  # no synthetic set made in the default place
    capsys.readouterr()
    assert main([*argv, "--data", "synthetic"]) == 2  # refused before a set is written
    assert "but the checkpoint was trained on --data" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
    folder.rename(tmp_path / "moved")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "the checkpoint's data must be 'synthetic' or a folder" in err
    assert "pass --data PATH" in err
