"""Train the reference checkpoint that ships in ``refimpl/weights/`` (lesson 12 starts from it).

    nice -n 15 .venv/bin/python scripts/train_reference.py --iters 2400 --threads 2

``maskrcnn_small`` from scratch on the shapes (the demo's data: 2000 + 200 images, seed 0)
with the demo's recipe (``PRESETS["shapes-demo"]`` in ``refimpl/engine/train.py``: SGD,
lr 0.04, warm-up, cosine decay) for a FIXED number of iterations, not the demo's time
budget, so the result does not depend on how busy the machine was. Then:

1. the state dict is cast to float16 and saved as a plain dict of tensors
   (``refimpl/weights/maskrcnn_small_shapes.pt``);
2. those float16 weights, loaded back into a float32 model, are evaluated with COCOeval on
   the 200 validation images (the AP the card reports is the shipped file's, not the
   float32 checkpoint's; both are recorded);
3. the card (``maskrcnn_small_shapes.json``) records the builder's arguments, the classes,
   the file's SHA-256, the command, git commit, iterations, wall time and the AP.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch + numba threads (see conftest)

import torch

from refimpl.data import SHAPES, CocoDetection, split_paths, write_shapes_dataset
from refimpl.data.shapes import dataset_matches
from refimpl.data.transforms import detection_transforms
from refimpl.engine.evaluate import evaluate, format_metrics
from refimpl.engine.provenance import provenance
from refimpl.engine.train import PRESETS, TrainConfig, load_checkpoint, train
from refimpl.model.mask_rcnn import maskrcnn_small
from refimpl.weights import REFERENCE, sha256

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "refimpl" / "weights"


def half_state_dict(state: dict) -> dict:
    """Floating tensors to float16 (BatchNorm's integer counter stays int64)."""
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=2400, help="training iterations (fixed)")
    p.add_argument("--data", default="data/generated/shapes", help="shapes dataset (reused)")
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=200)
    p.add_argument("--out", default="runs/reference", help="the training run's directory")
    p.add_argument("--dest", default=str(WEIGHTS_DIR), help="where the .pt and card go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    started = provenance(["scripts/train_reference.py", *(argv or sys.argv[1:])])

    data = Path(args.data)
    if not all(
        dataset_matches(data, split, n, args.seed, SHAPES)
        for split, n in (("train", args.train), ("val", args.val))
    ):
        write_shapes_dataset(data, args.train, args.val, args.seed, SHAPES)
    fields = {**PRESETS["shapes-demo"], "iters": args.iters, "time_budget_s": None}
    cfg = TrainConfig(data=str(data), out=args.out, device="cpu", seed=args.seed,
                      threads=args.threads, resume=args.resume, progress=not args.no_progress,
                      **fields)  # fmt: skip
    t0 = time.perf_counter()
    summary = train(cfg)
    if "segm" not in summary:
        print(f"stopped at iteration {summary['iteration']}: continue with --resume")
        return 1

    ckpt = load_checkpoint(Path(args.out) / "checkpoint.pt")
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    weights = dest / f"{REFERENCE}.pt"
    torch.save(half_state_dict(ckpt["model"]), weights)

    # The shipped file's own AP: float16 weights, float32 arithmetic.
    model = maskrcnn_small(ckpt["num_classes"], **cfg.model_kwargs)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    val = CocoDetection(*split_paths(data, "val"), detection_transforms(train=False))
    metrics = evaluate(model, val, batch_size=cfg.batch_size, label_to_cat=ckpt["label_to_cat"])
    keep = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    card = {
        "name": REFERENCE,
        "builder": "maskrcnn_small",
        "num_classes": ckpt["num_classes"],
        "class_names": ckpt["class_names"],
        "label_to_cat": ckpt["label_to_cat"],
        "model_kwargs": cfg.model_kwargs,
        "file": weights.name,
        "dtype": "float16",
        "bytes": weights.stat().st_size,
        "sha256": sha256(weights),
        "data": {"dataset": SHAPES.name, "train": args.train, "val": args.val, "seed": args.seed},
        "training": {
            "preset": "shapes-demo",
            "iterations": summary["iteration"],
            "images_per_iteration": cfg.batch_size,
            "train_wall_s": summary["wall_s"],
            "wall_s": round(time.perf_counter() - t0, 1),
            "threads": args.threads,
            "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k in fields},
        },
        "metrics": {
            "val_images": metrics["images"],
            "segm": {k: metrics["segm"][k] for k in keep},
            "bbox": {k: metrics["bbox"][k] for k in keep},
            "float32_checkpoint": {t: {k: summary[t][k] for k in keep} for t in ("segm", "bbox")},
        },
        "provenance": started,
    }
    (dest / f"{REFERENCE}.json").write_text(json.dumps(card, indent=2) + "\n")
    print(format_metrics(metrics))
    print(f"wrote {weights} ({card['bytes'] / 1e6:.1f} MB, sha256 {card['sha256'][:12]}...) "
          f"and its card; mask AP {metrics['segm']['AP']:.3f} after {summary['iteration']} "
          f"iterations")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
