"""The COCO dataset: every segmentation format, crowd and empty images, transforms, and
hand-made broken files (clear errors or counted skips, never a crash later)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from refimpl.data import CocoDetection, collate_fn, split_paths, write_shapes_dataset
from refimpl.data.coco import DatasetWarning
from refimpl.data.transforms import Compose, RandomHorizontalFlip, Resize, detection_transforms

H, W = 20, 30


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _uncompressed(mask):
    """COCO's uncompressed RLE: column-major run lengths starting with zeros."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": [mask.shape[0], mask.shape[1]], "counts": counts}


def _square(x1, y1, x2, y2):
    m = np.zeros((H, W), bool)
    m[y1:y2, x1:x2] = True
    return m


def _ann(ann_id, image_id=1, cat=1, bbox=(2, 3, 5, 4), seg=None, **extra):
    seg = seg if seg is not None else _rle(_square(2, 3, 7, 7))
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": list(bbox),
            "segmentation": seg, "area": 20, "iscrowd": 0, **extra}  # fmt: skip


def _write(tmp_path, annotations, images=None, categories=None, write_images=True):
    images = images or [{"id": 1, "file_name": "a.png", "height": H, "width": W}]
    data = {
        "images": images,
        "annotations": annotations,
        "categories": categories or [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}],
    }
    if write_images:
        for im in images:
            arr = np.full((im["height"], im["width"], 3), 100, np.uint8)
            Image.fromarray(arr).save(tmp_path / im["file_name"])
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def _load(tmp_path, annotations, **kw):
    meta = {k: kw.pop(k) for k in ("images", "categories") if k in kw}
    path = _write(tmp_path, annotations, **meta)
    return CocoDetection(tmp_path, path, **kw)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(out, train=6, val=2, seed=0)
    return out


def test_shapes_targets(shapes_dir):
    ds = CocoDetection(*split_paths(shapes_dir, "train"))
    assert len(ds) == 6 and ds.num_classes == 4
    assert ds.class_names == ["__background__", "square", "circle", "triangle"]
    for i in range(len(ds)):
        image, t = ds[i]
        assert image.shape == (3, 128, 128) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        n = len(t["labels"])
        assert t["boxes"].shape == (n, 4) and t["boxes"].dtype == torch.float32
        assert t["labels"].dtype == torch.int64 and t["masks"].dtype == torch.uint8
        assert t["masks"].shape == (n, 128, 128)
        assert t["area"].shape == (n,) and t["iscrowd"].tolist() == [0] * n
        for box, mask, area in zip(t["boxes"], t["masks"], t["area"], strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            # xyxy pixel extents: x2 = last column + 1
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert mask.sum() == area
    assert ds.summary["skipped"] == {} and ds.summary["images_used"] == 6


def test_polygon_and_both_rles(tmp_path):
    square = _square(2, 3, 7, 7)
    polygon = [[2, 3, 7, 3, 7, 7, 2, 7]]  # pixel corners: covers columns 2..6, rows 3..6
    ds = _load(tmp_path, [
        _ann(1, seg=polygon), _ann(2, seg=_uncompressed(square)), _ann(3, seg=_rle(square), cat=2),
    ])  # fmt: skip
    _, t = ds[0]
    assert t["labels"].tolist() == [1, 1, 2]
    for m in t["masks"]:
        assert (m.numpy().astype(bool) == square).mean() > 0.9
    np.testing.assert_array_equal(t["masks"][1].numpy(), square)
    np.testing.assert_array_equal(t["masks"][2].numpy(), square)
    np.testing.assert_allclose(t["boxes"][0].tolist(), [2, 3, 7, 7])


def test_crowd_and_empty_images(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": H, "width": W},
              {"id": 2, "file_name": "b.png", "height": H, "width": W}]  # fmt: skip
    anns = [_ann(1), _ann(2, iscrowd=1, seg=_uncompressed(_square(10, 10, 20, 15)))]
    ds = _load(tmp_path, anns, images=images)
    assert len(ds) == 2 and ds.summary["images_without_annotations"] == 1
    assert len(ds[0][1]["labels"]) == 1  # the crowd region is not a training target
    assert len(ds[1][1]["labels"]) == 0 and ds[1][1]["masks"].shape == (0, H, W)
    assert len(ds.coco.getAnnIds(iscrowd=True)) == 1  # but COCOeval sees it
    assert len(CocoDetection(tmp_path, tmp_path / "instances.json", skip_empty=True)) == 1
    crowd = CocoDetection(tmp_path, tmp_path / "instances.json", include_crowd=True)
    assert crowd[0][1]["iscrowd"].tolist() == [0, 1]


def test_non_contiguous_category_ids(tmp_path):
    cats = [{"id": 5, "name": "five"}, {"id": 9, "name": "nine"}]
    ds = _load(tmp_path, [_ann(1, cat=9), _ann(2, cat=5)], categories=cats)
    assert ds[0][1]["labels"].tolist() == [2, 1] and ds.num_classes == 3
    assert ds.label_to_cat == {1: 5, 2: 9}
    raw = CocoDetection(tmp_path, tmp_path / "instances.json", contiguous_labels=False)
    assert raw[0][1]["labels"].tolist() == [9, 5] and raw.num_classes == 10


# ------------------------------------------------------------------------------ broken files


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"images": [], "annotations": []}', "categories"),
        ('{"images": [{"id": 1}], "categories": []}', "file_name"),
        ('{"images": [{"id": 1, "file_name": "a.png", "height": 0, "width": 3}], "categories": []}',
         "height"),
        ('{"images": [{"id": 1, "file_name": "a", "height": 2, "width": 2},'
         ' {"id": 1, "file_name": "b", "height": 2, "width": 2}], "categories": []}',
         "duplicate image id"),
        ('{"images": [], "categories": [], "annotations": [{"id": 3}, {"id": 3}]}',
         "duplicate annotation id 3"),
    ],
)  # fmt: skip
def test_structural_errors_name_the_file(tmp_path, text, match):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        CocoDetection(tmp_path, path)
    assert "broken.json" in str(e.value)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        CocoDetection(tmp_path, tmp_path / "nope.json")


BAD_ANNOTATIONS = {
    "unknown_category": _ann(10, cat=77),
    "unknown_image": _ann(11, image_id=42),
    "bad_bbox": _ann(12, bbox=(1, 2, 3)),
    "degenerate_box": _ann(13, bbox=(5, 5, 0, 4)),
    "box_outside_image": _ann(14, bbox=(40, 5, 6, 6)),
    "bad_segmentation": _ann(15, seg={"size": [H, W], "counts": [3, 4]}),
    "empty_mask": _ann(16, seg=_rle(np.zeros((H, W), bool))),
}


@pytest.mark.parametrize("reason", sorted(BAD_ANNOTATIONS))
def test_bad_annotation_is_skipped_and_counted(tmp_path, reason):
    with pytest.warns(DatasetWarning, match=reason):
        ds = _load(tmp_path, [_ann(1), BAD_ANNOTATIONS[reason]])
    assert ds.summary["skipped"] == {reason: 1}
    assert len(ds[0][1]["labels"]) == 1
    assert len(ds.coco.getAnnIds()) == 1  # nor does it reach COCOeval


@pytest.mark.parametrize("reason", sorted(BAD_ANNOTATIONS))
def test_strict_raises_naming_the_annotation(tmp_path, reason):
    bad = BAD_ANNOTATIONS[reason]
    with pytest.raises(ValueError, match=f"annotation id {bad['id']}.*{reason}"):
        _load(tmp_path, [_ann(1), bad], strict=True)


def test_more_bad_segmentations(tmp_path):
    good = _rle(_square(2, 3, 7, 7))
    anns = [
        _ann(1, seg={"size": [H + 1, W], "counts": good["counts"]}),  # size mismatch
        _ann(2, seg={"size": [H, W], "counts": good["counts"][:-2] + "zz"}),  # corrupt counts
        _ann(3, seg=[[1, 2, 3, 4]]),  # a polygon of 2 points
        _ann(4, seg=[[1, 2, 3, float("nan"), 5, 6]]),
        _ann(5, seg="nonsense"),
        _ann(6, seg=[[1, 2, 3, 4], [2, 3, 7, 3, 7, 7, 2, 7]]),  # one good polygon is enough
    ]
    with pytest.warns(DatasetWarning):
        ds = _load(tmp_path, anns)
    assert ds.summary["skipped"] == {"bad_segmentation": 5}
    assert len(ds[0][1]["labels"]) == 1


def test_box_partly_outside_is_clipped(tmp_path):
    ds = _load(tmp_path, [_ann(1, bbox=(-3, 15, 10, 10))])
    assert ds[0][1]["boxes"].tolist() == [[0, 15, 7, 20]]
    assert ds.summary["clipped_boxes"] == 1 and ds.summary["skipped"] == {}


def test_missing_area_and_iscrowd_are_filled(tmp_path):
    ann = _ann(1)
    del ann["area"], ann["iscrowd"]
    ds = _load(tmp_path, [ann])
    assert ds[0][1]["area"].tolist() == [20.0]
    assert ds.coco.anns[1]["iscrowd"] == 0


def test_missing_image_files(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": H, "width": W},
              {"id": 2, "file_name": "gone.png", "height": H, "width": W}]  # fmt: skip
    path = _write(tmp_path, [_ann(1), _ann(2, image_id=2)], images=images)
    (tmp_path / "gone.png").unlink()
    with pytest.warns(DatasetWarning, match=r"gone\.png"):
        ds = CocoDetection(tmp_path, path)
    assert len(ds) == 1 and ds.summary["skipped"] == {"missing_image_file": 1}
    with pytest.raises(ValueError, match=r"gone\.png"):
        CocoDetection(tmp_path, path, strict=True)
    with pytest.raises(ValueError, match="wrong image root"):
        CocoDetection(tmp_path / "elsewhere", path)


def test_unreadable_or_wrong_size_image(tmp_path):
    """Without the constructor's file checks, a bad image is a clear error when loaded."""
    images = [{"id": 1, "file_name": "a.png", "height": H, "width": W},
              {"id": 2, "file_name": "b.png", "height": H, "width": W}]  # fmt: skip
    path = _write(tmp_path, [_ann(1)], images=images)
    (tmp_path / "a.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((H + 1, W, 3), np.uint8)).save(tmp_path / "b.png")
    ds = CocoDetection(tmp_path, path, check_files=False)
    with pytest.raises(ValueError, match=r"cannot read image .*a\.png \(image id 1\)"):
        ds[0]
    with pytest.raises(ValueError, match=r"b\.png .* is 30x21 but .* says 30x20"):
        ds[1]


def test_no_warning_for_a_clean_file(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _load(tmp_path, [_ann(1)])


# -------------------------------------------------------------------------------- transforms


def test_horizontal_flip_moves_boxes_with_masks(shapes_dir):
    ds = CocoDetection(*split_paths(shapes_dir, "train"), Compose([RandomHorizontalFlip(1.0)]))
    plain = CocoDetection(*split_paths(shapes_dir, "train"))
    for i in range(3):
        (image, t), (image0, t0) = ds[i], plain[i]
        torch.testing.assert_close(image, image0.flip(-1))
        torch.testing.assert_close(t["masks"], t0["masks"].flip(-1))
        for box, mask in zip(t["boxes"], t["masks"], strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_flip_probability_uses_torch_rng(shapes_dir):
    ds = CocoDetection(*split_paths(shapes_dir, "train"), detection_transforms(train=True))
    torch.manual_seed(0)
    a = [ds[0][0] for _ in range(8)]
    torch.manual_seed(0)
    b = [ds[0][0] for _ in range(8)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert len({bool(torch.equal(x, a[0])) for x in a}) == 2  # some flipped, some not


def test_resize(shapes_dir):
    ds = CocoDetection(*split_paths(shapes_dir, "train"), Compose([Resize(64)]))
    plain = CocoDetection(*split_paths(shapes_dir, "train"))
    (image, t), (_, t0) = ds[0], plain[0]
    assert image.shape == (3, 64, 64) and t["masks"].shape[-2:] == (64, 64)
    torch.testing.assert_close(t["boxes"], t0["boxes"] / 2)
    torch.testing.assert_close(t["area"], t0["area"] / 4)


def test_collate(shapes_dir):
    ds = CocoDetection(*split_paths(shapes_dir, "train"))
    images, targets = collate_fn([ds[0], ds[1]])
    assert len(images) == 2 and len(targets) == 2 and targets[1]["image_id"] == ds.ids[1]


def _broken_images(tmp_path):
    """Six images: good, garbage, a truncated PNG, a truncated JPEG, another size, and a
    good JPEG; every one annotated."""
    names = ["good.png", "garbage.png", "cut.png", "cut.jpg", "size.png", "good.jpg"]
    images = [{"id": i + 1, "file_name": n, "height": H, "width": W} for i, n in enumerate(names)]
    path = _write(tmp_path, [_ann(i + 1, image_id=i + 1) for i in range(6)], images=images)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)  # (incompressible: long files)
    Image.fromarray(noise).save(tmp_path / "cut.png")
    Image.fromarray(noise).save(tmp_path / "cut.jpg", quality=95)
    Image.fromarray(noise).save(tmp_path / "good.jpg", quality=95)
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    for name in ("cut.png", "cut.jpg"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
    Image.fromarray(np.zeros((H + 1, W, 3), np.uint8)).save(tmp_path / "size.png")
    return path


def test_broken_images_are_found_in_the_constructor(tmp_path):
    """Issue 12: a truncated or garbage image passed the constructor and failed mid-training.
    Now each is skipped and counted when the dataset is built (strict: raises, naming it),
    and every image left loads."""
    path = _broken_images(tmp_path)
    with pytest.warns(DatasetWarning, match="unreadable_image"):
        ds = CocoDetection(tmp_path, path)
    assert ds.summary["skipped"] == {"unreadable_image": 3, "wrong_image_size": 1}
    assert sorted(ds.images[i]["file_name"] for i in ds.ids) == ["good.jpg", "good.png"]
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, H, W) and len(target["boxes"]) == 1
    with pytest.raises(ValueError, match=r"image id 2: unreadable_image .*garbage\.png"):
        CocoDetection(tmp_path, path, strict=True)


def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    """A 400-megapixel PNG raised PIL's raw DecompressionBombError mid-training. The limit
    is PIL's (lowered here, so that a small image stands for a huge one): the constructor
    skips the image, and loading it unchecked is a ValueError naming it and the limit."""
    path = _write(tmp_path, [_ann(1)])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W // 3)  # 2x over: PIL's error
    with pytest.raises(ValueError, match="image_too_large"):
        CocoDetection(tmp_path, path, strict=True)
    ds = CocoDetection(tmp_path, path, check_files=False)
    with pytest.raises(ValueError, match=r"a\.png \(image id 1\) is larger than .*MAX_IMAGE_PIX"):
        ds[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W - 1)  # just over: PIL only warns
    with pytest.raises(ValueError, match="image_too_large"):
        CocoDetection(tmp_path, path, strict=True)


@pytest.mark.parametrize("value", [4e8, -4e8, 1e12, 3 * W])
def test_far_polygon_coordinates_are_a_bad_segmentation(tmp_path, value):
    """Issue 12: pycocotools segfaults on a polygon coordinate >= 4e8 (C int overflow at 5x
    resolution), killing training with no message, inside the constructor. Such a polygon
    is now a counted bad_segmentation, checked before pycocotools sees it."""
    seg = [[2.0, 3.0, 7.0, 3.0, value, 7.0, 2.0, 7.0]]
    with pytest.warns(DatasetWarning, match="bad_segmentation"):
        ds = _load(tmp_path, [_ann(1, seg=seg), _ann(2)])
    assert ds.summary["skipped"] == {"bad_segmentation": 1}
    assert len(ds[0][1]["boxes"]) == 1
    # a point outside the image but within its size of an edge is a valid polygon
    ok = [[2.0, 3.0, 7.0, 3.0, -W + 1.0, 2 * H - 1.0, 2.0, 7.0]]
    assert _load(tmp_path, [_ann(1, seg=ok)]).summary["skipped"] == {}
