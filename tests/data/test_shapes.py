"""The synthetic shapes: the spec's properties, determinism, and a real COCO file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from refimpl.data import shapes
from refimpl.data.shapes import SHAPES, SHAPES_HARD, generate_image, image_rng


def _images(cfg, n=60, seed=0):
    return [generate_image(image_rng(seed, "train", i), cfg) for i in range(n)]


def test_shape_masks_known_areas():
    assert shapes.shape_mask("square", 30, 30, 5, 64, 64).sum() == 11 * 11
    circle = shapes.shape_mask("circle", 30, 30, 10, 64, 64)
    assert abs(circle.sum() - np.pi * 100) < 0.05 * np.pi * 100
    tri = shapes.shape_mask("triangle", 30, 30, 10, 64, 64)
    # base 2 s / sin 60, height 2 s
    assert abs(tri.sum() - 2 * 10 / np.sin(np.radians(60)) * 10) < 25
    assert tri[21, 30] and not tri[21, 25]  # the apex is at the top
    with pytest.raises(ValueError, match="unknown shape"):
        shapes.shape_mask("hexagon", 1, 1, 1, 4, 4)


def test_box_nms_known_answer():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float64)
    # IoU(0, 1) = 81 / 119 = 0.68: the higher-scored one survives.
    assert shapes.box_nms(boxes, np.array([0.0, 1.0, 2.0]), 0.3).tolist() == [2, 1]
    assert shapes.box_nms(boxes, np.array([0.0, 1.0, 2.0]), 0.7).tolist() == [2, 1, 0]


def test_spec_properties():
    counts = []
    for image, masks, labels in _images(SHAPES):
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert masks.shape == (len(labels), 128, 128) and masks.dtype == bool
        assert 1 <= len(labels) <= 4 and set(labels.tolist()) <= {1, 2, 3}
        counts.append(len(labels))
        # visible parts: disjoint, each in one uniform colour, the rest is the background
        assert (masks.sum(0) <= 1).all()
        for m in masks:
            assert m.sum() >= SHAPES.min_visible_area
            assert len(np.unique(image[m], axis=0)) == 1
        background = ~masks.any(0)
        assert len(np.unique(image[background], axis=0)) <= 1
    assert set(counts) >= {1, 2, 3}


def test_nms_keeps_boxes_apart():
    """Shapes are drawn from boxes that overlap by IoU <= 0.3 (before occlusion)."""
    cfg = SHAPES
    for i in range(40):
        rng = image_rng(0, "nms", i)
        _, masks, _ = generate_image(rng, cfg)
        boxes = [mask_util.toBbox(shapes.encode_mask(m)) for m in masks]
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                (x1, y1, w1, h1), (x2, y2, w2, h2) = boxes[a], boxes[b]
                iw = max(0, min(x1 + w1, x2 + w2) - max(x1, x2))
                ih = max(0, min(y1 + h1, y2 + h2) - max(y1, y2))
                inter = iw * ih
                # visible boxes can only shrink, so their IoU stays well below 0.5
                assert inter / (w1 * h1 + w2 * h2 - inter) < 0.5


def test_hard_variant_is_harder():
    easy, hard = _images(SHAPES), _images(SHAPES_HARD)
    assert max(len(lb) for _, _, lb in hard) > 4
    assert max(len(lb) for _, _, lb in hard) <= 8
    mean_area = lambda imgs: np.mean([m.sum() for _, ms, _ in imgs for m in ms])  # noqa: E731
    assert mean_area(hard) < mean_area(easy) / 3
    # textured: the background is not one colour
    image, masks, _ = hard[0]
    assert len(np.unique(image[~masks.any(0)], axis=0)) > 10


def test_deterministic_per_image():
    a = generate_image(image_rng(3, "train", 7))
    b = generate_image(image_rng(3, "train", 7))
    c = generate_image(image_rng(4, "train", 7))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' own, under NumPy 2
def test_writes_a_real_coco_dataset(tmp_path):
    paths = shapes.write_shapes_dataset(tmp_path, train=5, val=3, seed=1)
    assert set(paths) == {"train", "val"}
    coco = COCO(str(paths["train"]))
    assert len(coco.getImgIds()) == 5
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["square", "circle", "triangle"]
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        assert (tmp_path / "images" / info["file_name"]).is_file()
        index = int(info["file_name"].split("_")[1].split(".")[0])
        _, masks, labels = generate_image(image_rng(1, "train", index))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        assert [a["category_id"] for a in anns] == labels.tolist()
        for ann, mask in zip(anns, masks, strict=True):
            np.testing.assert_array_equal(coco.annToMask(ann), mask)
            assert ann["area"] == mask.sum() and ann["iscrowd"] == 0
            ys, xs = np.nonzero(mask)
            x, y = xs.min(), ys.min()
            assert ann["bbox"] == [x, y, xs.max() - x + 1, ys.max() - y + 1]
    # image i does not depend on how many images were generated
    shapes.write_shapes_dataset(tmp_path / "more", train=7, val=0, seed=1)
    first = json.loads(paths["train"].read_text())
    more = json.loads((tmp_path / "more/annotations/instances_train.json").read_text())
    n = len(first["annotations"])
    assert more["annotations"][:n] == first["annotations"]
    assert shapes.dataset_matches(tmp_path, "train", 5, 1, SHAPES)
    assert not shapes.dataset_matches(tmp_path, "train", 5, 2, SHAPES)


def test_cli(tmp_path):
    from refimpl.__main__ import main

    out = tmp_path / "hard"
    assert main(["data", "shapes", "--out", str(out), "--train", "2", "--val", "1", "--hard"]) == 0
    data = json.loads((out / "annotations/instances_train.json").read_text())
    assert data["info"]["config"]["name"] == "shapes-hard"
    assert len(list((out / "images").glob("*.png"))) == 3
