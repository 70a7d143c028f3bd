"""The demo, the project's main job: shapes data -> train ``maskrcnn_small`` on the CPU ->
COCO box and mask AP -> a figure of predictions (``python -m refimpl demo``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from refimpl.argtypes import NONNEGATIVE_FLOAT, POSITIVE_INT, SEED
from refimpl.data import CocoDetection, split_paths
from refimpl.data.shapes import SHAPES, dataset_matches, write_shapes_dataset

from . import viz
from .checkpoint import load_model
from .config import PRESETS, TrainConfig
from .evaluate import format_metrics
from .predict import predict
from .provenance import provenance
from .train import train

DEMO_DATA = {"train": 2000, "val": 200}  # shapes images; the training settings: PRESETS


def add_arguments(p) -> None:
    preset = PRESETS["shapes-demo"]
    p.add_argument("--out", default="runs/demo", help="run directory")
    p.add_argument("--data", default="data/generated/shapes", help="shapes dataset (reused)")
    p.add_argument("--train", type=POSITIVE_INT, default=DEMO_DATA["train"], help="training images")
    p.add_argument("--val", type=POSITIVE_INT, default=DEMO_DATA["val"], help="validation images")
    p.add_argument(
        "--time-budget",
        type=NONNEGATIVE_FLOAT,
        default=preset["time_budget_s"] / 60,
        metavar="MINUTES",
        help="training time (0: run all --iters)",
    )
    p.add_argument("--iters", type=POSITIVE_INT, default=preset["iters"], help="at most this many")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=preset["batch_size"])
    p.add_argument("--lr", type=NONNEGATIVE_FLOAT, default=preset["lr"])
    p.add_argument("--model", default=preset["model"], help="small | resnet50 | module:builder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=POSITIVE_INT, help="torch threads (default: all cores)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo")
    p.add_argument("--no-progress", action="store_true")


def main(args) -> int:
    """Shapes data -> train -> COCO AP -> a figure: the whole pipeline, timed."""
    t0 = time.perf_counter()
    out, data = Path(args.out), Path(args.data)
    if not all(
        dataset_matches(data, split, n, args.seed, SHAPES)
        for split, n in (("train", args.train), ("val", args.val))
    ):
        print(f"generating {args.train} + {args.val} shapes images in {data}")
        write_shapes_dataset(data, args.train, args.val, args.seed, SHAPES)
    t_data = time.perf_counter()

    fields = {**PRESETS["shapes-demo"], "iters": args.iters, "batch_size": args.batch_size,
              "lr": args.lr, "model": args.model,
              "time_budget_s": args.time_budget * 60 if args.time_budget else None}  # fmt: skip
    if args.model != "small":  # the preset's model options are maskrcnn_small's
        fields["model_kwargs"] = {}
    cfg = TrainConfig(data=str(data), out=str(out), device=args.device, seed=args.seed,
                      threads=args.threads, resume=args.resume, progress=not args.no_progress,
                      **fields)  # fmt: skip
    summary = train(cfg)
    if "segm" not in summary:  # interrupted (SIGTERM / Ctrl-C): a checkpoint, no result yet
        print(f"stopped at iteration {summary['iteration']}: continue with --resume")
        return 1
    t_train = time.perf_counter()

    model, ckpt = load_model(out / "checkpoint.pt", args.device)
    val = CocoDetection(*split_paths(data, "val"))
    items = [val[i] for i in range(min(8, len(val)))]
    outputs = predict(model, [image for image, _ in items], args.device)
    fig = viz.detection_grid(
        [image for image, _ in items], outputs, [t for _, t in items], ckpt["class_names"]
    )
    viz.save_figure(fig, out / "predictions.png")
    t_end = time.perf_counter()

    report = {
        "bbox": summary.get("bbox"),
        "segm": summary.get("segm"),
        "val_images": summary.get("images"),
        "iterations": summary["iteration"],
        "seconds": {"data": round(t_data - t0, 1), "train_and_eval": round(t_train - t_data, 1),
                    "figure": round(t_end - t_train, 1), "total": round(t_end - t0, 1)},
        "train": fields,
        "data": {"train": args.train, "val": args.val, "seed": args.seed},
        "provenance": provenance(),
    }  # fmt: skip
    (out / "demo.json").write_text(json.dumps(report, indent=2))
    print(format_metrics(summary))
    segm = summary["segm"]
    print(
        f"mask AP {segm['AP']:.3f}  AP50 {segm['AP50']:.3f}  AP75 {segm['AP75']:.3f}  "
        f"(box AP {summary['bbox']['AP']:.3f}) on {summary['images']} validation images "
        f"after {summary['iteration']} iterations; {report['seconds']['total'] / 60:.1f} min in all"
    )
    print(f"wrote {out / 'metrics.json'}, {out / 'demo.json'}, {out / 'predictions.png'}")
    return 0
