"""The command line: ``python -m refimpl COMMAND ...``.

==========  ==================================================================
data        ``data shapes --out DIR --train N --val M --seed S [--hard]``
train       train Mask R-CNN on a COCO-layout directory (also under torchrun)
evaluate    COCO box and mask AP of a checkpoint
predict     draw a checkpoint's detections on images
ablate      the paper's RoI-operator and mask-loss ablations (Table 2b/2c)
demo        shapes data -> train ``maskrcnn_small`` on the CPU -> AP and a figure
bench       the RoI operator benchmark (``refimpl.bench``)
grade       the course autograder (``refimpl.course.grade``)
==========  ==================================================================

Each command's module is imported only when it runs, so ``--help`` is fast and a command
whose dependencies are missing does not break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": ("refimpl.train", "train Mask R-CNN (torchrun for several processes)"),
    "evaluate": ("refimpl.evaluate", "COCO bbox and segm AP of a checkpoint"),
    "predict": ("refimpl.predict", "draw detections on images"),
    "ablate": ("refimpl.ablate", "the RoI-operator and mask-loss ablations"),
    "demo": (None, "shapes -> train maskrcnn_small on the CPU -> AP and a figure"),
}
# Commands owned by other modules, which parse their own arguments: (module candidates).
PASSTHROUGH = {
    "bench": ("refimpl.bench",),
    "grade": ("refimpl.course.grade", "refimpl.grade"),
}


def _passthrough(name: str, argv: list[str]) -> int:
    for module in PASSTHROUGH[name]:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):  # the module itself is missing
                continue
            raise
        if hasattr(mod, "main"):
            return mod.main(argv) or 0
    print(f"refimpl {name}: not available in this checkout", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m refimpl", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data = sub.add_parser("data", help="generate a dataset")
    data_sub = data.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    shapes = data_sub.add_parser("shapes", help="the synthetic shapes (COCO format)")
    from .data import shapes as shapes_module

    shapes_module.add_arguments(shapes)
    shapes.set_defaults(module="refimpl.data.shapes")
    # (listed for --help only: main() hands these to their own parsers before this one runs)
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    for name in PASSTHROUGH:
        sub.add_parser(name, help=f"see python -m refimpl {name} --help", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        return _passthrough(argv[0], argv[1:])
    if argv and argv[0] in COMMANDS:
        # The command's own parser (imported now, not for every --help of another command).
        module_name, help_ = COMMANDS[argv[0]]
        parser = argparse.ArgumentParser(prog=f"python -m refimpl {argv[0]}", description=help_)
        if module_name is None:  # the demo lives here
            demo_arguments(parser)
            return demo(parser.parse_args(argv[1:])) or 0
        module = importlib.import_module(module_name)
        module.add_arguments(parser)
        if hasattr(module, "apply_preset"):
            module.apply_preset(parser, argv[1:])
        return module.main(parser.parse_args(argv[1:])) or 0
    args = build_parser().parse_args(argv)
    return importlib.import_module(args.module).main(args) or 0


# ------------------------------------------------------------------------------- the demo

DEMO_DATA = {"train": 2000, "val": 200}  # shapes images; the training settings: PRESETS


def demo_arguments(p) -> None:
    from .train import PRESETS

    preset = PRESETS["shapes-demo"]
    p.add_argument("--out", default="runs/demo", help="run directory")
    p.add_argument("--data", default="data/generated/shapes", help="shapes dataset (reused)")
    p.add_argument("--train", type=int, default=DEMO_DATA["train"], help="training images")
    p.add_argument("--val", type=int, default=DEMO_DATA["val"], help="validation images")
    p.add_argument(
        "--time-budget",
        type=float,
        default=preset["time_budget_s"] / 60,
        metavar="MINUTES",
        help="training time (0: run all --iters)",
    )
    p.add_argument("--iters", type=int, default=preset["iters"], help="at most this many")
    p.add_argument("--batch-size", type=int, default=preset["batch_size"])
    p.add_argument("--lr", type=float, default=preset["lr"])
    p.add_argument("--model", default=preset["model"], help="small | resnet50 | module:builder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo")
    p.add_argument("--no-progress", action="store_true")


def demo(args) -> int:
    """Shapes data -> train -> COCO AP -> a figure: the whole pipeline, timed."""
    import json
    import time
    from pathlib import Path

    from . import viz
    from .data import CocoDetection, split_paths
    from .data.shapes import SHAPES, dataset_matches, write_shapes_dataset
    from .evaluate import format_metrics
    from .predict import predict
    from .train import PRESETS, TrainConfig, load_model, train

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


if __name__ == "__main__":
    sys.exit(main())
