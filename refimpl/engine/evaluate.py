"""COCO evaluation: box and mask AP with pycocotools' COCOeval (``python -m refimpl evaluate``).

The paper reports COCO's metrics (Mask R-CNN, Sec. 4): AP averaged over IoU thresholds
0.5:0.05:0.95, AP50, AP75, and AP for small / medium / large objects, for boxes (``bbox``)
and masks (``segm``). Detections are converted to COCO results as torchvision's reference
does: boxes xyxy -> xywh, masks (probabilities pasted into the image) thresholded at 0.5 and
RLE-encoded; the mask results carry no box, so COCOeval takes a detection's area from its
mask. Ground truth is the dataset's cleaned COCO object (crowd regions included: COCOeval
ignores detections matched to them).

An area range without ground truth has no AP (COCOeval's -1): reported as ``None``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from refimpl.argtypes import POSITIVE_INT
from refimpl.data import CocoDetection, split_paths

from .checkpoint import load_model
from .threads import set_threads

STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
IOU_TYPES = ("bbox", "segm")


def to_coco_results(image_id: int, output: dict, label_to_cat: dict, mask_threshold: float = 0.5):
    """One image's detections -> ``(bbox results, segm results)``, lists of COCO result dicts."""
    boxes = output["boxes"].detach().cpu().double().reshape(-1, 4)
    scores = output["scores"].detach().cpu().tolist()
    cats = [label_to_cat[int(label)] for label in output["labels"].detach().cpu().tolist()]
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    bbox = [
        {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
        for c, b, s in zip(cats, xywh, scores, strict=True)
    ]
    segm = []
    if "masks" in output and len(boxes):
        masks = output["masks"].detach().cpu()
        masks = (masks[:, 0] if masks.ndim == 4 else masks) > mask_threshold
        rles = mask_util.encode(np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8)))
        for c, s, rle in zip(cats, scores, rles, strict=True):
            rle["counts"] = rle["counts"].decode("ascii")
            segm.append({"image_id": image_id, "category_id": c, "segmentation": rle, "score": s})
    return bbox, segm


def _load_results(coco_gt: COCO, results: list[dict]) -> COCO:
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(copy.deepcopy(results))  # loadRes edits the dicts
    # pycocotools' loadRes cannot take an empty list; no detections is a valid result (AP 0).
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def coco_evaluate(
    coco_gt: COCO, results: dict[str, list[dict]], img_ids: Iterable[int], verbose: bool = False
) -> dict:
    """COCOeval for each IoU type in ``results`` (``{"bbox": [...], "segm": [...]}``) over
    ``img_ids``; returns ``{iou_type: {AP, AP50, ..., ARl}}`` plus COCOeval's text summary."""
    img_ids = sorted(set(img_ids))
    if not img_ids:
        raise ValueError("no images to evaluate")
    metrics: dict = {}
    text = []
    for iou_type, res in results.items():
        coco_dt = _load_results(coco_gt, res)
        E = COCOeval(coco_gt, coco_dt, iou_type)
        E.params.imgIds = img_ids
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            E.evaluate()
            E.accumulate()
            E.summarize()
        text.append(f"{iou_type}:\n{buf.getvalue()}")
        metrics[iou_type] = {
            name: (None if v < 0 else float(v)) for name, v in zip(STAT_NAMES, E.stats, strict=True)
        }
    metrics["summary"] = "\n".join(text)
    if verbose:
        print(metrics["summary"])
    return metrics


@torch.inference_mode()
def predict_dataset(
    model, dataset, device="cpu", batch_size: int = 4, max_images=None, progress=False
):
    """Yield ``(image_id, output)`` for the dataset's images (outputs on the CPU)."""
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="eval", leave=False):
        items = [dataset[i] for i in range(start, min(start + batch_size, n))]
        images = [image.to(device) for image, _ in items]
        outputs = model(images)
        for (image, target), output in zip(items, outputs, strict=True):
            mh, mw = output["masks"].shape[-2:] if "masks" in output else image.shape[-2:]
            info = dataset.images[target["image_id"]]
            if (mh, mw) != (info["height"], info["width"]):
                raise ValueError(
                    f"image id {target['image_id']}: masks are {mw}x{mh}, the image is "
                    f"{info['width']}x{info['height']}; evaluate without a Resize transform"
                )
            yield target["image_id"], {k: v.detach().cpu() for k, v in output.items()}


def evaluate(
    model, dataset, device="cpu", batch_size=4, max_images=None, progress=False, label_to_cat=None
) -> dict:
    """Box and mask AP of ``model`` on a :class:`refimpl.data.CocoDetection` (no Resize).

    ``label_to_cat`` maps the model's labels to the dataset's category ids (default: the
    dataset's own mapping; pass the training set's, from the checkpoint, if they differ).
    """
    label_to_cat = label_to_cat or dataset.label_to_cat
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    results: dict[str, list] = {t: [] for t in IOU_TYPES}
    img_ids = []
    try:
        for image_id, output in predict_dataset(
            model, dataset, device, batch_size, max_images, progress
        ):
            img_ids.append(image_id)
            bbox, segm = to_coco_results(image_id, output, label_to_cat)
            results["bbox"] += bbox
            results["segm"] += segm
    finally:
        model.train(was_training)
    inference_s = time.perf_counter() - t0
    metrics = coco_evaluate(dataset.coco, results, img_ids)
    metrics["images"] = len(img_ids)
    metrics["detections"] = len(results["bbox"])
    metrics["inference_s"] = round(inference_s, 3)
    return metrics


def format_metrics(metrics: dict) -> str:
    """A small Markdown table of the AP columns for bbox and segm."""
    cols = STAT_NAMES[:6]
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for t in IOU_TYPES:
        if t in metrics:
            vals = [metrics[t][c] for c in cols]
            cells = ["-" if v is None else f"{100 * v:.1f}" for v in vals]
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="COCO-layout dataset directory")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by train")
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    parser.add_argument("--split", default="val")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=4)
    parser.add_argument("--max-images", type=POSITIVE_INT, default=None)
    parser.add_argument("--threads", type=POSITIVE_INT, default=None)


def main(args) -> int:
    set_threads(args.threads)
    model, ckpt = load_model(args.checkpoint, args.device)
    dataset = CocoDetection(*split_paths(args.data, args.split))
    label_to_cat = {int(k): int(v) for k, v in ckpt["label_to_cat"].items()}
    metrics = evaluate(
        model, dataset, args.device, args.batch_size, args.max_images, True, label_to_cat
    )
    metrics["checkpoint"] = str(args.checkpoint)
    metrics["iteration"] = ckpt.get("iteration")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2))
    print(format_metrics(metrics))
    print(f"wrote {out}")
    return 0
