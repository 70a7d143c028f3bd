"""A COCO instances dataset for Mask R-CNN, on pycocotools (torchvision's ``CocoDetection``
plus the reference scripts' ``ConvertCocoPolysToMask``, with the checks they leave out).

Reads any COCO instances file: polygon, compressed RLE and uncompressed RLE segmentations,
crowd annotations, images without annotations. ``dataset[i]`` is ``(image, target)``:

- ``image``: float32 ``[3, H, W]`` in 0..1 (RGB);
- ``target``: ``boxes`` float32 ``[n, 4]`` xyxy (pixels), ``labels`` int64 ``[n]``,
  ``masks`` uint8 ``[n, H, W]``, ``image_id`` int, ``area`` float32 ``[n]``,
  ``iscrowd`` int64 ``[n]``.

Every check runs once, in the constructor, so that a broken file fails *before* training
starts, never at iteration 10 000:

- structural problems raise ``ValueError`` naming the file (and the image): malformed JSON,
  missing ``images``/``categories``, images without id / file_name / positive height and
  width, duplicate image, annotation or category ids;
- a problem with one annotation skips that annotation, counted by reason in
  :attr:`CocoDetection.summary` and reported in one :class:`DatasetWarning` (``strict=True``
  raises ``ValueError`` naming the annotation id instead). Reasons: ``unknown_image``,
  ``unknown_category``, ``bad_bbox`` (not 4 finite numbers), ``degenerate_box`` (width or
  height below ``min_box_size``), ``box_outside_image`` (nothing left after clipping to the
  image), ``bad_segmentation`` (no usable polygon, RLE whose size or counts disagree with
  the image), ``empty_mask`` (zero-area mask). Boxes partly outside the image are clipped;
  a missing ``area`` is computed from the mask, a missing ``iscrowd`` is 0;
- a missing image file skips the image (``strict=True``: raises); if none of the files is
  found the root is wrong and the constructor raises;
- so does an image file that is not a whole image of the JSON's size, checked in the
  constructor without decoding pixels (:func:`check_image_file`: garbage, a truncated PNG
  or JPEG, another size, a decompression bomb over ``PIL.Image.MAX_IMAGE_PIXELS``); an
  image that still cannot be decoded (damage inside a JPEG's data), or any of these with
  ``check_files=False``, raises ``ValueError`` naming it when loaded;
- a polygon point far outside its image (more than the image's size beyond an edge: a
  coordinate of 4e8 segfaults pycocotools) makes the annotation ``bad_segmentation``.

Crowd annotations (``iscrowd=1``) are left out of the training targets, as in torchvision's
reference (``include_crowd=True`` keeps them with ``iscrowd=1``), and stay in :attr:`coco`,
the cleaned ground truth that COCOeval uses (it ignores detections matched to crowd regions).

Images without (non-crowd) annotations are kept by default (negatives for the model; every
image counts in evaluation); ``skip_empty=True`` drops them, as torchvision's training
reference does.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from collections import Counter
from numbers import Real
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from .transforms import ToTensor


class DatasetWarning(UserWarning):
    """Annotations or images were skipped while loading a dataset (see ``summary``)."""


class _Skip(Exception):
    """Internal: one annotation cannot be used; carries the reason for the summary."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def split_paths(data_dir: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """``(image root, annotation file)`` of a split of a COCO-layout directory.

    The annotation file is ``DIR/annotations/instances_{split}.json``; the images are in
    ``DIR/images/{split}/`` or ``DIR/{split}/`` (COCO's ``train2017/``) if one exists, else
    in ``DIR/images/`` (the shapes layout).
    """
    data_dir = Path(data_dir)
    ann_file = data_dir / "annotations" / f"instances_{split}.json"
    for root in (data_dir / "images" / split, data_dir / split):
        if root.is_dir():
            return root, ann_file
    return data_dir / "images", ann_file


def load_coco_json(path: str | os.PathLike) -> dict:
    """Read and structurally check a COCO instances file; ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: malformed JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: missing or non-list {key!r}")
    data.setdefault("annotations", [])
    if not isinstance(data["annotations"], list):
        raise ValueError(f"{path}: 'annotations' is not a list")

    _check_images(path, data["images"])
    _check_unique_ids(path, data["categories"], "categories", "a", "category")
    _check_unique_ids(path, data["annotations"], "annotations", "an", "annotation")
    return data


def _check_images(path: Path, images: list) -> None:
    seen = set()
    for k, im in enumerate(images):
        where = f"{path}: images[{k}]"
        if not isinstance(im, dict) or not _is_int(im.get("id")):
            raise ValueError(f"{where}: an image needs an integer 'id'")
        where += f" (id {im['id']})"
        if not isinstance(im.get("file_name"), str):
            raise ValueError(f"{where}: missing 'file_name'")
        if not all(_is_int(im.get(d)) and im[d] > 0 for d in ("height", "width")):
            raise ValueError(f"{where}: 'height' and 'width' must be positive integers")
        if im["id"] in seen:
            raise ValueError(f"{where}: duplicate image id")
        seen.add(im["id"])


def _check_unique_ids(path: Path, items: list, key: str, article: str, thing: str) -> None:
    """Every item of ``data[key]`` a dict with an integer ``id``, no id twice."""
    ids = set()
    for k, item in enumerate(items):
        if not isinstance(item, dict) or not _is_int(item.get("id")):
            raise ValueError(f"{path}: {key}[{k}]: {article} {thing} needs an integer 'id'")
        if item["id"] in ids:
            raise ValueError(f"{path}: duplicate {thing} id {item['id']}")
        ids.add(item["id"])


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def _rle_string_counts(s: str) -> list[int]:
    """pycocotools' ``rleFrString`` in Python: to check a compressed RLE before the C code
    decodes it (``rleDecode`` writes without bounds checks, so bad counts corrupt memory)."""
    counts, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise _Skip("bad_segmentation", "truncated compressed RLE")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise _Skip("bad_segmentation", "invalid character in compressed RLE")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _check_polygon_range(polys: list[list[float]], height: int, width: int) -> None:
    """Every point within the image widened by its own size on each side.

    pycocotools rasterizes polygons in C ``int`` at 5x resolution: a coordinate of 4e8 or
    more overflows and segfaults the process (training died with no message), and a far
    point makes it allocate one entry per 1/5 pixel of every edge. A point that far outside
    is a broken annotation, not a mask."""
    for poly in polys:
        xs, ys = poly[0::2], poly[1::2]
        for name, values, size in (("x", xs, width), ("y", ys, height)):
            lo, hi = min(values), max(values)
            if lo < -size or hi > 2 * size:
                bad = lo if lo < -size else hi
                raise _Skip(
                    "bad_segmentation",
                    f"polygon {name} coordinate {bad:g} outside [-{size}, {2 * size}] "
                    f"(the {width}x{height} image widened by its size)",
                )


def segmentation_to_rle(seg, height: int, width: int, check: bool = True) -> dict:
    """Any COCO segmentation (polygons, uncompressed or compressed RLE) -> compressed RLE.

    Raises ``_Skip("bad_segmentation", why)`` when it cannot describe an ``height x width``
    mask. Polygons with fewer than 3 points or non-finite coordinates are dropped.
    ``check=False`` skips re-checking a compressed RLE's counts (already checked).
    """
    if isinstance(seg, list):
        polys = [
            [float(v) for v in p]
            for p in seg
            if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(map(_is_number, p))
        ]
        if not polys:
            raise _Skip("bad_segmentation", "no polygon with at least 3 finite points")
        _check_polygon_range(polys, height, width)
        return mask_util.merge(mask_util.frPyObjects(polys, height, width))
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [height, width]:
            raise _Skip("bad_segmentation", f"RLE size {seg['size']} != image {height}x{width}")
        counts = seg["counts"]
        if isinstance(counts, list):  # uncompressed
            if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
                raise _Skip("bad_segmentation", "uncompressed RLE counts do not sum to H*W")
            return mask_util.frPyObjects(seg, height, width)
        if isinstance(counts, bytes):
            counts = counts.decode("ascii", errors="replace")
        if isinstance(counts, str):
            runs = _rle_string_counts(counts) if check else [height * width]
            if any(c < 0 for c in runs) or sum(runs) != height * width:
                raise _Skip("bad_segmentation", "compressed RLE counts do not sum to H*W")
            return {"size": [height, width], "counts": counts.encode("ascii")}
    raise _Skip("bad_segmentation", "neither polygons nor an RLE with 'counts' and 'size'")


def check_image_file(path: Path, width: int, height: int) -> tuple[str, str] | None:
    """``None`` for a whole image file of ``width x height``, else ``(reason, detail)``:
    ``unreadable_image`` (not an image PIL knows, or truncated: a PNG's chunks are checked to
    its end, a JPEG must end with its end-of-image marker), ``wrong_image_size`` (the JSON
    disagrees) or ``image_too_large`` (beyond ``PIL.Image.MAX_IMAGE_PIXELS``: a
    decompression bomb). Reads the header and, for PNG, the chunks: no pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                size, kind = im.size, im.format
                im.verify()  # PNG: every chunk's CRC, up to IEND (a cut file fails here)
        if kind == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - 1024))
                if b"\xff\xd9" not in f.read():  # (some writers pad after the marker)
                    return "unreadable_image", "JPEG without its end-of-image marker (truncated)"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return "image_too_large", f"over PIL.Image.MAX_IMAGE_PIXELS ({e})"
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL's errors for bad files
        return "unreadable_image", f"{type(e).__name__}: {e}"
    if size != (width, height):
        return "wrong_image_size", f"{size[0]}x{size[1]}, the annotation file says {width}x{height}"
    return None


def clean_annotation(ann: dict, image: dict, cat_ids, min_box_size: float = 1.0) -> dict:
    """A checked copy of one annotation: bbox clipped to the image, ``area``/``iscrowd``
    filled in. Raises ``_Skip(reason, detail)`` when the annotation cannot be used."""
    if ann.get("category_id") not in cat_ids:
        raise _Skip("unknown_category", f"category_id {ann.get('category_id')!r}")
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list | tuple) and len(bbox) == 4 and all(map(_is_number, bbox))):
        raise _Skip("bad_bbox", f"bbox {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w < min_box_size or h < min_box_size:
        raise _Skip("degenerate_box", f"bbox {bbox!r}")
    height, width = image["height"], image["width"]
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 - x1 < min_box_size or y2 - y1 < min_box_size:
        raise _Skip("box_outside_image", f"bbox {bbox!r} in a {width}x{height} image")
    rle = segmentation_to_rle(ann.get("segmentation"), height, width)
    mask_area = float(mask_util.area(rle))
    if mask_area <= 0:
        raise _Skip("empty_mask", "the mask has no pixel")
    iscrowd = ann.get("iscrowd", 0)
    if iscrowd not in (0, 1):  # True/False compare equal to 1/0
        raise _Skip("bad_bbox", f"iscrowd {iscrowd!r}")
    area = ann.get("area")
    clean = dict(ann)
    clean["bbox"] = [x1, y1, x2 - x1, y2 - y1]
    clean["area"] = float(area) if _is_number(area) and area > 0 else mask_area
    clean["iscrowd"] = int(iscrowd)
    clean["_clipped"] = (x1, y1, x2, y2) != (x, y, x + w, y + h)
    return clean


class CocoDetection(torch.utils.data.Dataset):
    """A COCO instances file as Mask R-CNN ``(image, target)`` pairs (see the module doc).

    Args:
        root: the image directory (``file_name`` is relative to it).
        ann_file: the instances JSON.
        transforms: a callable ``(image tensor, target) -> (image, target)`` applied after the
            image is read as a float tensor (see :mod:`refimpl.data.transforms`).
        skip_empty: drop images with no usable non-crowd annotation.
        include_crowd: keep crowd annotations in the targets (``iscrowd=1``).
        strict: raise on the first bad annotation or missing image instead of skipping.
        min_box_size: boxes narrower or lower than this (pixels) are degenerate.
        contiguous_labels: map category ids to labels 1..K in sorted id order (torchvision's
            COCO models use the raw ids, 1..90, with 91 classes; pass False for that).
        check_files: check in the constructor that every image file exists and is a whole
            image of the JSON's size (headers only; off: errors when an image is loaded).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms=None,
        *,
        skip_empty: bool = False,
        include_crowd: bool = False,
        strict: bool = False,
        min_box_size: float = 1.0,
        contiguous_labels: bool = True,
        check_files: bool = True,
    ):
        self.root, self.ann_file = Path(root), Path(ann_file)
        self.transforms = transforms
        self.include_crowd = include_crowd
        data = load_coco_json(self.ann_file)

        self._set_labels(data["categories"], contiguous_labels)

        skipped: Counter[str] = Counter()
        examples: dict[str, list[str]] = {}

        def skip(reason: str, what: str, detail: str = ""):
            message = f"{what}: {reason}" + (f" ({detail})" if detail else "")
            if strict:
                raise ValueError(f"{self.ann_file}: {message}")
            skipped[reason] += 1
            examples.setdefault(reason, [])
            if len(examples[reason]) < 3:
                examples[reason].append(message)

        images = {im["id"]: im for im in data["images"]}
        if check_files and images:
            self._drop_missing_files(images, skip)

        cat_set, all_image_ids = set(self.cat_to_label), {im["id"] for im in data["images"]}
        annotations, clipped = [], 0
        for ann in data["annotations"]:
            image = images.get(ann.get("image_id"))
            if image is None:
                if ann.get("image_id") not in all_image_ids:
                    where = f"annotation id {ann['id']}"
                    skip("unknown_image", where, f"image_id {ann.get('image_id')!r}")
                continue  # else its image file is missing (already counted)
            try:
                clean = clean_annotation(ann, image, cat_set, min_box_size)
            except _Skip as e:
                skip(e.reason, f"annotation id {ann['id']} (image id {image['id']})", e.detail)
                continue
            clipped += clean.pop("_clipped")
            annotations.append(clean)

        # The cleaned ground truth (crowd annotations included): what COCOeval scores against.
        clean_data = {k: v for k, v in data.items() if k not in ("images", "annotations")}
        clean_data["images"] = list(images.values())
        clean_data["annotations"] = annotations
        self.coco = COCO()
        self.coco.dataset = clean_data
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()

        self._anns: dict[int, list[dict]] = {i: [] for i in images}
        for ann in annotations:
            if include_crowd or not ann["iscrowd"]:
                self._anns[ann["image_id"]].append(ann)
        self.images = images
        empty = [i for i, anns in self._anns.items() if not anns]
        self.ids = [i for i in images if not (skip_empty and not self._anns[i])]

        crowd = sum(a["iscrowd"] for a in annotations)
        self.summary = {
            "ann_file": str(self.ann_file),
            "images": len(data["images"]),
            "images_used": len(self.ids),
            "images_without_annotations": len(empty),
            "annotations": len(data["annotations"]),
            "annotations_used": len(annotations) - (0 if include_crowd else crowd),
            "crowd": crowd,
            "clipped_boxes": clipped,
            "skipped": dict(skipped),
            "skipped_examples": examples,
        }
        if skipped:
            details = "; ".join(f"{r}: {n} (e.g. {examples[r][0]})" for r, n in skipped.items())
            warnings.warn(
                f"{self.ann_file}: skipped {sum(skipped.values())} item(s): {details}",
                DatasetWarning,
                stacklevel=2,
            )

    def _drop_missing_files(self, images: dict, skip) -> None:
        """Remove (and ``skip``) the images whose file is not under the root; none there at
        all is a wrong root, a ValueError. Then remove (and ``skip``) the files that are not
        a whole image of the size the JSON gives (:func:`check_image_file`)."""
        missing = [i for i, im in images.items() if not (self.root / im["file_name"]).is_file()]
        if len(missing) == len(images):
            raise ValueError(
                f"{self.ann_file}: none of the {len(images)} image files is under {self.root}"
                f" (e.g. {self.root / images[missing[0]]['file_name']}); wrong image root?"
            )
        for i in missing:
            skip("missing_image_file", f"image id {i}", str(self.root / images[i]["file_name"]))
            del images[i]
        for i in list(images):
            info = images[i]
            problem = check_image_file(self.root / info["file_name"], info["width"], info["height"])
            if problem is not None:
                reason, detail = problem
                skip(reason, f"image id {i}", f"{self.root / info['file_name']}: {detail}")
                del images[i]

    def _set_labels(self, categories: list, contiguous: bool) -> None:
        """``categories`` (sorted by id), ``cat_to_label`` / ``label_to_cat``,
        ``num_classes`` and ``class_names`` (index = label)."""
        self.categories = sorted(categories, key=lambda c: c["id"])
        cat_ids = [c["id"] for c in self.categories]
        if contiguous:
            self.cat_to_label = {cid: i + 1 for i, cid in enumerate(cat_ids)}
        else:
            self.cat_to_label = {cid: cid for cid in cat_ids}
        self.label_to_cat = {v: k for k, v in self.cat_to_label.items()}
        self.num_classes = max(self.cat_to_label.values(), default=0) + 1
        names = {c["id"]: str(c.get("name", c["id"])) for c in self.categories}
        self.class_names = ["__background__"] * self.num_classes
        for cid, label in self.cat_to_label.items():
            self.class_names[label] = names[cid]

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.root / self.images[self.ids[index]]["file_name"]

    def load_image(self, image_id: int) -> Image.Image:
        info = self.images[image_id]
        path = self.root / info["file_name"]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except Image.DecompressionBombError as e:
            raise ValueError(
                f"image {path} (image id {image_id}) is larger than PIL.Image.MAX_IMAGE_PIXELS "
                f"({Image.MAX_IMAGE_PIXELS} pixels) allows: a decompression bomb, or raise that "
                f"limit for genuinely large images ({e})"
            ) from e
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three on bad files
            raise ValueError(f"cannot read image {path} (image id {image_id}): {e}") from e
        if image.size != (info["width"], info["height"]):
            raise ValueError(
                f"image {path} (image id {image_id}) is {image.size[0]}x{image.size[1]} but "
                f"{self.ann_file} says {info['width']}x{info['height']}"
            )
        return image

    def load_target(self, image_id: int) -> dict:
        info = self.images[image_id]
        height, width = info["height"], info["width"]
        anns = self._anns[image_id]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        if anns:
            rles = [segmentation_to_rle(a["segmentation"], height, width, False) for a in anns]
            with warnings.catch_warnings():  # pycocotools' own NumPy 2 deprecation notice
                warnings.simplefilter("ignore", DeprecationWarning)
                masks = np.ascontiguousarray(np.moveaxis(mask_util.decode(rles), -1, 0))
        else:
            masks = np.zeros((0, height, width), np.uint8)
        labels = [self.cat_to_label[a["category_id"]] for a in anns]
        return {
            "boxes": boxes,
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(masks),
            "image_id": image_id,
            "area": torch.tensor([a["area"] for a in anns], dtype=torch.float32),
            "iscrowd": torch.tensor([a["iscrowd"] for a in anns], dtype=torch.int64),
        }

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        image, target = ToTensor()(self.load_image(image_id), self.load_target(image_id))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
            target = drop_degenerate(target)
        return image, target


def drop_degenerate(target: dict, min_size: float = 1e-3) -> dict:
    """Remove instances whose box a transform made (nearly) empty: zero-size boxes give NaN
    box-regression targets (log of 0 in the box coding)."""
    boxes = target["boxes"]
    keep = ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)
    if bool(keep.all()):
        return target
    n = len(keep)
    per_instance = {k for k, v in target.items() if torch.is_tensor(v) and v.ndim and len(v) == n}
    return {k: v[keep] if k in per_instance else v for k, v in target.items()}


def collate_fn(batch):
    """Detection batches stay lists: images differ in size and targets in instance count."""
    return tuple(zip(*batch, strict=True))
