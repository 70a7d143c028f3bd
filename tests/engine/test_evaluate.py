"""COCO evaluation against known answers: perfect predictions give AP 1, and hand-made
imperfect ones give the AP that COCO's 101-point interpolation predicts."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from refimpl.data import CocoDetection, split_paths
from refimpl.engine.evaluate import coco_evaluate, evaluate, format_metrics, to_coco_results

from .conftest import STANDIN

# COCOeval interpolates precision at 101 recall points 0, 0.01, ..., 1.
HALF_RECALL_AP = 51 / 101


def _gt(boxes_per_image, size=100):
    """A COCO ground truth with one category and square masks filling the boxes."""
    images, anns = [], []
    for i, boxes in enumerate(boxes_per_image, start=1):
        images.append({"id": i, "file_name": f"{i}.png", "height": size, "width": size})
        for x1, y1, x2, y2 in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]})  # fmt: skip
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _output(boxes, scores, size=100):
    masks = torch.zeros(len(boxes), 1, size, size)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        masks[k, 0, y1:y2, x1:x2] = 0.8
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.ones(len(boxes), dtype=torch.int64),
            "scores": torch.tensor(scores, dtype=torch.float32), "masks": masks}  # fmt: skip


def _evaluate(gt, outputs):
    results = {"bbox": [], "segm": []}
    for image_id, out in outputs.items():
        bbox, segm = to_coco_results(image_id, out, {1: 1})
        results["bbox"] += bbox
        results["segm"] += segm
    return coco_evaluate(gt, results, gt.getImgIds())


BOXES = [[(10, 10, 50, 50), (60, 60, 90, 90)], [(20, 20, 60, 40), (5, 50, 45, 95)]]


def test_perfect_predictions():
    gt = _gt(BOXES)
    m = _evaluate(gt, {i + 1: _output(b, [0.9] * len(b)) for i, b in enumerate(BOXES)})
    for t in ("bbox", "segm"):
        assert m[t]["AP"] == pytest.approx(1.0) and m[t]["AP50"] == pytest.approx(1.0)
        assert m[t]["AP75"] == pytest.approx(1.0)
        # areas 1600, 900, 800, 1800: small (< 32^2) and medium, no large (> 96^2) objects
        assert m[t]["APs"] == pytest.approx(1.0) and m[t]["APm"] == pytest.approx(1.0)
        assert m[t]["APl"] is None


def test_half_the_objects_found():
    gt = _gt(BOXES)
    m = _evaluate(gt, {1: _output(BOXES[0][:1], [0.9]), 2: _output(BOXES[1][:1], [0.9])})
    for t in ("bbox", "segm"):
        for k in ("AP", "AP50", "AP75"):
            assert m[t][k] == pytest.approx(HALF_RECALL_AP)


def test_a_false_positive_ranked_first():
    """One object, a wrong detection scored above the right one: precision 1/2 at recall 1."""
    gt = _gt([[(10, 10, 50, 50)]])
    m = _evaluate(gt, {1: _output([(60, 60, 90, 90), (10, 10, 50, 50)], [0.9, 0.8])})
    assert m["bbox"]["AP"] == pytest.approx(0.5) and m["segm"]["AP"] == pytest.approx(0.5)


def test_a_loose_box():
    """IoU 0.64: a true positive at thresholds 0.50, 0.55, 0.60 of the ten -> AP 0.3."""
    gt = _gt([[(10, 10, 50, 50)]])
    m = _evaluate(gt, {1: _output([(10, 10, 50, 35)], [0.9])})  # IoU 1000/1600 = 0.625
    assert m["bbox"]["AP50"] == pytest.approx(1.0) and m["bbox"]["AP75"] == 0.0
    assert m["bbox"]["AP"] == pytest.approx(0.3)


def test_no_detections():
    m = _evaluate(_gt(BOXES), {1: _output([], [])})
    assert m["bbox"]["AP"] == 0.0 and m["segm"]["AP"] == 0.0


def test_to_coco_results_conversions():
    out = _output([(10, 20, 30, 60)], [0.7])
    out["masks"][0, 0, 20:25, 10:30] = 0.4  # below the 0.5 threshold
    out["labels"][:] = 2
    bbox, segm = to_coco_results(7, out, {2: 90})
    assert bbox == [{"image_id": 7, "category_id": 90, "bbox": [10, 20, 20, 40],
                     "score": pytest.approx(0.7)}]  # fmt: skip
    from pycocotools import mask as mask_util

    assert segm[0]["category_id"] == 90 and isinstance(segm[0]["segmentation"]["counts"], str)
    assert mask_util.area(segm[0]["segmentation"]) == 20 * 35


class Oracle(torch.nn.Module):
    """Returns the ground truth of whichever dataset image it is shown."""

    def __init__(self, dataset):
        super().__init__()
        self.truth = {}
        for i in range(len(dataset)):
            image, t = dataset[i]
            self.truth[image.numpy().tobytes()] = t

    def forward(self, images):
        outs = []
        for image in images:
            t = self.truth[image.numpy().tobytes()]
            n = len(t["labels"])
            outs.append({"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(n),
                         "masks": t["masks"][:, None].float()})  # fmt: skip
        return outs


def test_evaluate_end_to_end_with_an_oracle(shapes_data):
    ds = CocoDetection(*split_paths(shapes_data, "val"))
    m = evaluate(Oracle(ds), ds, batch_size=2)
    assert m["images"] == 3 and m["detections"] == len(ds.coco.getAnnIds())
    for t in ("bbox", "segm"):
        assert m[t]["AP"] == pytest.approx(1.0) and m[t]["AP75"] == pytest.approx(1.0)
    assert "| segm | 100.0 | 100.0 | 100.0 |" in format_metrics(m)


def test_evaluate_cli(shapes_data, tmp_path):
    from refimpl.__main__ import main
    from refimpl.engine.train import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(data=str(shapes_data), out=str(run), model=STANDIN, iters=1,
                      batch_size=2, progress=False, final_eval=False, threads=1))  # fmt: skip
    out = tmp_path / "metrics.json"
    argv = ["evaluate", "--data", str(shapes_data), "--checkpoint", str(run / "checkpoint.pt"),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    m = json.loads(out.read_text())
    assert m["iteration"] == 1 and m["images"] == 3 and set(m) >= {"bbox", "segm"}
    # the stand-in's one fixed box is some image's square at best: a low but valid AP
    assert 0.0 <= m["segm"]["AP"] < 0.5
    assert np.isfinite(m["bbox"]["AP"])
