"""Draw a checkpoint's detections on images: ``python -m refimpl predict``.

``--images`` takes files and directories (every .png/.jpg/.jpeg/.bmp in them); each image
gets ``OUT/<name>_pred.png`` with its masks, boxes, class names and scores (detections
scoring at least ``--score-threshold``), and ``OUT/predictions.json`` lists the detections
(boxes xyxy, labels, class names, scores; no masks).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from refimpl.argtypes import FRACTION, POSITIVE_INT

from . import viz
from .checkpoint import load_model

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def image_files(paths) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such image or directory: {p}")
    return files


def load_image(path) -> torch.Tensor:
    """An image file as float32 ``[3, H, W]`` in 0..1 (RGB)."""
    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


@torch.inference_mode()
def predict(model, images, device="cpu", batch_size: int = 4) -> list[dict]:
    """Detections for a list of image tensors (outputs on the CPU)."""
    model.eval()
    outputs = []
    for i in range(0, len(images), batch_size):
        batch = [im.to(device) for im in images[i : i + batch_size]]
        outputs += [{k: v.cpu() for k, v in o.items()} for o in model(batch)]
    return outputs


def draw_prediction(image, output, class_names=None, score_threshold=0.5, size=5.0, title=None):
    """A one-panel figure of ``output`` drawn on ``image``."""
    fig, axes = viz.new_figure(1, 1, size)
    shown = viz.draw_instances(axes[0, 0], image, output, class_names, score_threshold, title)
    if title is None:
        axes[0, 0].set_title(f"{shown} detections with score >= {score_threshold:g}", fontsize=9)
    return fig


def detections_json(output: dict, class_names=None, score_threshold: float = 0.0) -> list[dict]:
    keep = output["scores"] >= score_threshold
    names = class_names or []
    return [
        {
            "box": [round(float(v), 2) for v in box],
            "label": int(label),
            "class": names[int(label)] if int(label) < len(names) else str(int(label)),
            "score": round(float(score), 4),
        }
        for box, label, score in zip(
            output["boxes"][keep], output["labels"][keep], output["scores"][keep], strict=True
        )
    ]


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", nargs="+", required=True, help="image files or directories")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--score-threshold", type=FRACTION, default=0.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=4)


def main(args) -> int:
    model, ckpt = load_model(args.checkpoint, args.device)
    class_names = ckpt.get("class_names")
    files = image_files(args.images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    listing = {}
    for i in range(0, len(files), args.batch_size):
        chunk = files[i : i + args.batch_size]
        images = [load_image(f) for f in chunk]
        for f, image, output in zip(
            chunk, images, predict(model, images, args.device), strict=True
        ):
            fig = draw_prediction(image, output, class_names, args.score_threshold, title=f.name)
            viz.save_figure(fig, out / f"{f.stem}_pred.png")
            listing[str(f)] = detections_json(output, class_names, args.score_threshold)
    (out / "predictions.json").write_text(json.dumps(listing, indent=1))
    print(f"wrote {len(files)} figure(s) and predictions.json to {out}")
    return 0
