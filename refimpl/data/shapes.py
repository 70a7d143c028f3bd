"""The synthetic shapes data, written to disk as a real COCO dataset.

This is matterport's ``shapes`` sample (the usual CPU-scale check of a Mask R-CNN): 128x128
RGB images with a random solid background colour and 1..4 filled shapes (square, circle,
triangle: classes 1..3) of random colour, centre in [20, 107], half-size 20..32. Shapes
whose boxes overlap by IoU > 0.3 are removed by NMS (later shapes win, as in matterport),
and a later shape occludes the earlier ones, so each instance mask is its *visible* part.

Two deliberate differences from matterport, both so that every label is learnable:

- a shape's colour differs from the background and from every earlier shape by at least
  ``min_contrast`` (matterport allows an invisible shape, the same colour as what is behind it);
- a shape whose visible part is smaller than ``min_visible_area`` pixels (or
  ``min_visible_fraction`` of itself) is not drawn at all, rather than labelled as a sliver.

``SHAPES_HARD`` is the variant for the paper's ablations (Table 2b/2c): smaller objects, up to
8 instances, occlusion allowed, noise and a gradient on the background and noisy shapes. Small
objects are where RoIPool's quantization costs the most mask AP at high IoU (AP75).

Every image is a pure function of ``(seed, split, index)``, so image 7 of a split is the same
whether 10 or 10000 images are generated. Output layout (a COCO dataset any tool can read)::

    OUT/images/{split}_{index:06d}.png
    OUT/annotations/instances_{split}.json     RLE segmentation, area, bbox xywh, iscrowd 0
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

CLASS_NAMES = ("square", "circle", "triangle")  # category ids 1, 2, 3


@dataclass(frozen=True)
class ShapesConfig:
    """Everything that defines a shapes dataset (recorded in the annotation file's ``info``)."""

    name: str = "shapes"
    height: int = 128
    width: int = 128
    min_shapes: int = 1
    max_shapes: int = 4
    center_min: int = 20  # centre x and y are uniform integers in [center_min, center_max]
    center_max: int = 107
    size_min: int = 20  # half-size s (square: side 2s + 1; circle: radius s)
    size_max: int = 32
    nms_iou: float | None = 0.3  # None: no NMS, shapes may overlap (occlusion)
    min_contrast: float = 60.0  # Euclidean RGB distance to the background and earlier shapes
    min_visible_area: int = 30  # pixels; a shape less visible than this is not drawn
    min_visible_fraction: float = 0.0  # of the shape's own area
    background_noise: float = 0.0  # std of per-pixel Gaussian noise (0..255 scale)
    background_gradient: float = 0.0  # amplitude of a random linear gradient
    shape_noise: float = 0.0  # std of per-pixel noise on the shapes (a texture)


SHAPES = ShapesConfig()
SHAPES_HARD = ShapesConfig(
    name="shapes-hard",
    max_shapes=8,
    center_min=8,
    center_max=119,
    size_min=6,
    size_max=16,
    nms_iou=None,
    min_contrast=50.0,
    min_visible_area=20,
    min_visible_fraction=0.4,
    background_noise=12.0,
    background_gradient=60.0,
    shape_noise=12.0,
)
PRESETS = {"shapes": SHAPES, "shapes-hard": SHAPES_HARD}


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one image: independent of how many images are generated."""
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS on [N, 4] xyxy boxes (continuous areas, as torchvision): kept indices."""
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        lo = np.maximum(boxes[i, :2], boxes[rest, :2])
        hi = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
        iou = inter / (area[i] + area[rest] - inter)
        order = rest[iou <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def shape_mask(kind: str, cx: int, cy: int, s: int, height: int, width: int) -> np.ndarray:
    """The filled shape as a bool [H, W] mask, pixel (x, y) at integer coordinates (as
    OpenCV's ``rectangle`` / ``circle`` / ``fillPoly``, which matterport uses)."""
    yy, xx = np.mgrid[0:height, 0:width]
    if kind == "square":
        return (np.abs(xx - cx) <= s) & (np.abs(yy - cy) <= s)
    if kind == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= s * s
    if kind == "triangle":
        # matterport's equilateral triangle: apex (cx, cy - s), base y = cy + s.
        half_base = s / np.sin(np.radians(60))
        apex = (cx, cy - s)
        left, right = (cx - half_base, cy + s), (cx + half_base, cy + s)

        def side(p, q):  # >= 0 on the inner side of the edge p -> q (clockwise in image coords)
            return (q[0] - p[0]) * (yy - p[1]) - (q[1] - p[1]) * (xx - p[0])

        return (side(apex, right) >= 0) & (side(right, left) >= 0) & (side(left, apex) >= 0)
    raise ValueError(f"unknown shape {kind!r}; choose from {CLASS_NAMES}")


def _colour(rng: np.random.Generator, avoid: list[np.ndarray], min_contrast: float):
    """A random RGB colour at least ``min_contrast`` away from every colour in ``avoid``."""
    for _ in range(100):
        c = rng.integers(0, 256, size=3).astype(np.float64)
        if all(np.linalg.norm(c - a) >= min_contrast for a in avoid):
            return c
    return c  # practically unreachable for contrasts below ~150


def generate_image(rng: np.random.Generator, cfg: ShapesConfig = SHAPES):
    """One image and its instances.

    Returns ``(image uint8 [H, W, 3], masks bool [n, H, W], labels int64 [n])``, masks
    being the visible parts, in drawing order (later shapes on top).
    """
    h, w = cfg.height, cfg.width
    bg = rng.integers(0, 256, size=3).astype(np.float64)
    n = int(rng.integers(cfg.min_shapes, cfg.max_shapes + 1))
    shapes = []
    for _ in range(n):
        kind = int(rng.integers(0, len(CLASS_NAMES)))
        cx, cy = (int(v) for v in rng.integers(cfg.center_min, cfg.center_max + 1, size=2))
        s = int(rng.integers(cfg.size_min, cfg.size_max + 1))
        shapes.append((kind, cx, cy, s))
    if cfg.nms_iou is not None and shapes:
        boxes = np.array([[x - s, y - s, x + s, y + s] for _, x, y, s in shapes], np.float64)
        # matterport scores shapes by their index: a later shape survives an overlap.
        keep = box_nms(boxes, np.arange(len(shapes), dtype=np.float64), cfg.nms_iou)
        shapes = [shapes[i] for i in sorted(keep)]

    full = [shape_mask(CLASS_NAMES[k], x, y, s, h, w) for k, x, y, s in shapes]
    # Visibility from the top shape down: a shape too hidden is dropped before it is drawn,
    # so it neither appears unlabelled in the image nor occludes the shapes under it.
    above = np.zeros((h, w), bool)
    kept = []
    for i in reversed(range(len(shapes))):
        visible = full[i] & ~above
        area = int(visible.sum())
        if area < cfg.min_visible_area or area < cfg.min_visible_fraction * full[i].sum():
            continue
        kept.append(i)
        above |= full[i]
    kept.reverse()

    image = np.broadcast_to(bg, (h, w, 3)).copy()
    if cfg.background_gradient:
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        ramp = (np.cos(angle) * xx / w + np.sin(angle) * yy / h) * cfg.background_gradient
        image += ramp[..., None]
    if cfg.background_noise:
        image += rng.normal(0, cfg.background_noise, size=image.shape)
    colours = [bg]
    for i in kept:
        c = _colour(rng, colours, cfg.min_contrast)
        colours.append(c)
        m = full[i]
        texture = rng.normal(0, cfg.shape_noise, size=(int(m.sum()), 3)) if cfg.shape_noise else 0
        image[m] = c + texture
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    masks = np.zeros((len(kept), h, w), bool)
    covered = np.zeros((h, w), bool)
    for j in reversed(range(len(kept))):  # visible part = shape minus everything drawn later
        masks[j] = full[kept[j]] & ~covered
        covered |= full[kept[j]]
    labels = np.array([shapes[i][0] + 1 for i in kept], dtype=np.int64)
    return image, masks, labels


def encode_mask(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a bool [H, W] mask, JSON-ready (``counts`` as str)."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def coco_categories() -> list[dict]:
    return [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASS_NAMES)]


def write_split(out: str | os.PathLike, split: str, count: int, seed: int, cfg: ShapesConfig):
    """Write ``count`` images of ``split`` and its annotation file; returns the file's path."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        image, masks, labels = generate_image(image_rng(seed, split, index), cfg)
        file_name = f"{split}_{index:06d}.png"
        Image.fromarray(image).save(out / "images" / file_name)
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": file_name, "height": cfg.height, "width": cfg.width}
        )
        for mask, label in zip(masks, labels, strict=True):
            rle = encode_mask(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "segmentation": rle,
                    "area": int(mask.sum()),
                    # xywh of the visible mask, pixel extents (as pycocotools' toBbox)
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    info = {
        "description": f"synthetic {cfg.name} ({split}), refimpl.data.shapes",
        "version": "1",
        "seed": seed,
        "config": dataclasses.asdict(cfg),
    }
    dataset = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }
    path = out / "annotations" / f"instances_{split}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dataset))
    os.replace(tmp, path)  # a half-written annotation file never looks complete
    return path


def write_shapes_dataset(
    out: str | os.PathLike,
    train: int = 1000,
    val: int = 200,
    seed: int = 0,
    cfg: ShapesConfig = SHAPES,
) -> dict[str, Path]:
    """Generate the ``train`` and ``val`` splits under ``out``; returns split -> annotation file."""
    paths = {}
    for split, count in (("train", train), ("val", val)):
        if count > 0:
            paths[split] = write_split(out, split, count, seed, cfg)
    return paths


def dataset_matches(out: str | os.PathLike, split: str, count: int, seed: int, cfg: ShapesConfig):
    """True if ``out`` already holds exactly this split (so a demo can skip regenerating)."""
    path = Path(out) / "annotations" / f"instances_{split}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    info = data.get("info", {})
    return (
        info.get("seed") == seed
        and info.get("config") == dataclasses.asdict(cfg)
        and len(data.get("images", [])) == count
        and all((Path(out) / "images" / im["file_name"]).is_file() for im in data["images"])
    )


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="dataset directory to write")
    parser.add_argument("--train", type=int, default=1000, help="training images")
    parser.add_argument("--val", type=int, default=200, help="validation images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hard", action="store_true", help="the harder variant (ablations)")


def main(args) -> int:
    cfg = SHAPES_HARD if args.hard else SHAPES
    paths = write_shapes_dataset(args.out, args.train, args.val, args.seed, cfg)
    for split, path in paths.items():
        print(f"{cfg.name} {split}: {path}")
    return 0
