"""The paper's ablations in miniature: ``python -m refimpl ablate --out DIR [--size ...]``.

Mask R-CNN (He et al. 2017), Table 2c: RoIPool vs RoIWarp vs RoIAlign (max and average
pooling), and Table 2b: a softmax over classes vs the per-class sigmoid mask loss. Each
variant trains the same model from the same seed on the same data (the harder shapes:
small, occluded, textured objects, where quantizing the RoI costs mask AP at high IoU) and
is scored with COCO mask AP / AP50 / AP75. The results go to ``DIR/ablation.md`` (the two
tables, beside the paper's COCO numbers) and ``DIR/ablation.json``.

Sizes: ``smoke`` (seconds per variant: a test of the plumbing, not a result), ``cpu``
(about 5 minutes per variant on 2 cores: measured, RoIPool mask AP 48.7 / AP75 50.0 against
RoIAlign's 59.5 / 72.1, with equal AP50: the paper's pattern), ``full`` (a GPU: more data,
longer training). A finished
variant (its ``metrics.json`` exists) is not trained again, so an interrupted ablation
continues where it stopped; ``--force`` retrains.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from refimpl.data.shapes import SHAPES_HARD, dataset_matches, write_shapes_dataset

from .train import TrainConfig, parse_model_kw, train


@dataclass(frozen=True)
class Variant:
    slug: str
    name: str
    table: str  # "2c" or "2b"
    options: dict
    columns: tuple[str, ...]  # the paper's descriptive columns
    paper: tuple[float, float, float]  # the paper's COCO mask AP, AP50, AP75 (ResNet-50-C4)
    same_as: str | None = None  # a variant with identical settings: reuse its run


VARIANTS = (
    Variant("roipool", "RoIPool", "2c", {"roi_op": "pool"}, ("", "", "max"), (26.9, 48.8, 26.4)),
    Variant("roiwarp-max", "RoIWarp", "2c", {"roi_op": "warp", "pool_mode": "max"},
            ("", "✓", "max"), (27.2, 49.2, 27.1)),
    Variant("roiwarp-avg", "RoIWarp", "2c", {"roi_op": "warp", "pool_mode": "avg"},
            ("", "✓", "ave"), (27.1, 48.9, 27.1)),
    Variant("roialign-max", "RoIAlign", "2c", {"roi_op": "align", "pool_mode": "max"},
            ("✓", "✓", "max"), (30.2, 51.0, 31.8)),
    Variant("roialign-avg", "RoIAlign", "2c", {"roi_op": "align", "pool_mode": "avg"},
            ("✓", "✓", "ave"), (30.3, 51.2, 31.5)),
    Variant("softmax", "softmax", "2b", {"roi_op": "align", "pool_mode": "avg",
            "mask_loss": "softmax"}, (), (24.8, 44.1, 25.1)),
    Variant("sigmoid", "sigmoid", "2b", {"roi_op": "align", "pool_mode": "avg",
            "mask_loss": "sigmoid"}, (), (30.3, 51.2, 31.5), same_as="roialign-avg"),
)  # fmt: skip
VARIANT_SLUGS = tuple(v.slug for v in VARIANTS)

# Data and training per size. ``train``/``val``: images; the rest are TrainConfig fields.
SIZES = {
    "smoke": {"train": 8, "val": 4, "iters": 2, "batch_size": 2, "warmup_iters": 1, "lr": 0.01},
    "cpu": {"train": 1000, "val": 200, "iters": 800, "batch_size": 8, "warmup_iters": 50,
            "lr": 0.02, "clip_grad_norm": 10.0,
            "model_kwargs": {"box_batch_size_per_image": 64}},
    "full": {"train": 5000, "val": 500, "iters": 10000, "batch_size": 16, "warmup_iters": 200,
             "lr": 0.04, "clip_grad_norm": 10.0, "workers": 4},
}  # fmt: skip


def run_ablation(
    out,
    size: str = "smoke",
    variants=VARIANT_SLUGS,
    model: str = "small",
    model_kwargs: dict | None = None,
    device: str = "cpu",
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    overrides: dict | None = None,
) -> dict:
    """Train and evaluate each variant; write and return the tables' data."""
    out = Path(out)
    settings = {**SIZES[size], **(overrides or {})}
    n_train, n_val = settings.pop("train"), settings.pop("val")
    if model != "small":  # the sizes' model options are maskrcnn_small's
        settings.pop("model_kwargs", None)
    model_kwargs = {**settings.pop("model_kwargs", {}), **(model_kwargs or {})}
    data = out / "data"
    if not (
        dataset_matches(data, "train", n_train, seed, SHAPES_HARD)
        and dataset_matches(data, "val", n_val, seed, SHAPES_HARD)
    ):
        write_shapes_dataset(data, n_train, n_val, seed, SHAPES_HARD)
    chosen = [v for v in VARIANTS if v.slug in variants]
    unknown = set(variants) - set(VARIANT_SLUGS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; choose from {VARIANT_SLUGS}")
    results = {}
    for v in chosen:
        slug = v.same_as if v.same_as in VARIANT_SLUGS and v.same_as in results else v.slug
        if slug != v.slug:
            results[v.slug] = {**results[slug], "same_run_as": slug}
            continue
        run_dir = out / "runs" / v.slug
        metrics_file = run_dir / "metrics.json"
        if metrics_file.is_file() and not force:
            metrics = json.loads(metrics_file.read_text())
        else:
            t0 = time.perf_counter()
            cfg = TrainConfig(
                data=str(data), out=str(run_dir), model=model, device=device, seed=seed,
                model_kwargs=dict(model_kwargs), progress=progress,
                log_every=max(1, settings.get("iters", 100) // 50),
                **{k: v.options[k] for k in ("roi_op", "pool_mode", "mask_loss") if k in v.options},
                **settings,
            )  # fmt: skip
            metrics = train(cfg)
            metrics["variant_wall_s"] = round(time.perf_counter() - t0, 1)
        results[v.slug] = {
            "segm": metrics.get("segm"),
            "bbox": metrics.get("bbox"),
            "wall_s": metrics.get("wall_s"),
        }
    report = {
        "size": size,
        "seed": seed,
        "model": model,
        "dataset": dataclasses.asdict(SHAPES_HARD) | {"train": n_train, "val": n_val},
        "settings": settings,
        "model_kwargs": model_kwargs,
        "results": results,
    }
    (out / "ablation.json").write_text(json.dumps(report, indent=2))
    (out / "ablation.md").write_text(markdown_tables(report))
    return report


def _ap(metrics, key) -> str:
    if not metrics or metrics.get(key) is None:
        return "-"
    return f"{100 * metrics[key]:.1f}"


def markdown_tables(report: dict) -> str:
    """Tables 2c and 2b as in the paper (mask AP in %), ours beside the paper's COCO numbers."""
    res = report["results"]
    lines = [
        f"# RoI operator and mask loss ablations ({report['size']} size, shapes-hard, "
        f"{report['dataset']['val']} validation images, seed {report['seed']})",
        "",
        "Mask AP (COCO 0.5:0.95), AP50, AP75 in %. Paper: Mask R-CNN Table 2, COCO minival, "
        "ResNet-50-C4.",
        "",
        "## Table 2c: RoIAlign",
        "",
        "| | align? | bilinear? | agg. | AP | AP50 | AP75 | paper AP | paper AP50 | paper AP75 |",
        "|---|:-:|:-:|:-:|--:|--:|--:|--:|--:|--:|",
    ]
    for v in VARIANTS:
        if v.table == "2c" and v.slug in res:
            m = res[v.slug]["segm"]
            lines.append(
                f"| {v.name} | {' | '.join(v.columns)} | {_ap(m, 'AP')} | {_ap(m, 'AP50')} | "
                f"{_ap(m, 'AP75')} | {' | '.join(f'{p:.1f}' for p in v.paper)} |"
            )
    lines += [
        "",
        "## Table 2b: multinomial vs independent masks",
        "",
        "| | AP | AP50 | AP75 | paper AP | paper AP50 | paper AP75 |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for v in VARIANTS:
        if v.table == "2b" and v.slug in res:
            m = res[v.slug]["segm"]
            lines.append(
                f"| {v.name} | {_ap(m, 'AP')} | {_ap(m, 'AP50')} | {_ap(m, 'AP75')} | "
                f"{' | '.join(f'{p:.1f}' for p in v.paper)} |"
            )
    if report["size"] == "smoke":
        lines += ["", "(smoke size: a test of the plumbing; these numbers mean nothing)"]
    return "\n".join(lines) + "\n"


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="output directory (data, runs, tables)")
    parser.add_argument("--size", choices=tuple(SIZES), default="smoke")
    parser.add_argument("--variants", nargs="+", choices=VARIANT_SLUGS, default=list(VARIANT_SLUGS))
    parser.add_argument("--model", default="small", help="small | resnet50 | module:builder")
    parser.add_argument("--model-kw", action="append", metavar="KEY=VALUE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iters", type=int, help="override the size's iterations")
    parser.add_argument("--force", action="store_true", help="retrain finished variants")
    parser.add_argument("--no-progress", action="store_true")


def main(args) -> int:
    overrides = {"iters": args.iters} if args.iters else {}
    report = run_ablation(
        args.out, args.size, args.variants, args.model, parse_model_kw(args.model_kw),
        args.device, args.seed, args.force, not args.no_progress, overrides,
    )  # fmt: skip
    print(markdown_tables(report))
    print(f"wrote {Path(args.out) / 'ablation.md'} and ablation.json")
    return 0
