"""The paper's ablations in miniature: ``python -m refimpl ablate --out DIR [--size ...]``.

Mask R-CNN (He et al. 2017), Table 2c: RoIPool vs RoIWarp vs RoIAlign (max and average
pooling), and Table 2b: a softmax over classes vs the per-class sigmoid mask loss. Each
variant trains the same model on the same data (the harder shapes: small, occluded, textured
objects, where quantizing the RoI costs mask AP at high IoU) with the same schedule, once
per training seed (``--seeds 0 1 2``: the initial weights and the sampling order; the data
stay those of ``--data-seed``), and is scored with COCO mask AP / AP50 / AP75. The results:
``DIR/ablation.json`` (every run, each variant's mean and spread over the seeds, the paired
differences against RoIPool and softmax, the command, git commit, iterations and wall time
of every run) and ``DIR/ablation.md`` (the two tables beside the paper's COCO numbers).

Sizes: ``smoke`` (seconds per variant: a test of the plumbing, not a result), ``cpu``
(about 8 minutes per run on one core; the committed results in ``docs/results/`` were made
at this size), ``full`` (a GPU: more data, longer training). A finished run (its
``metrics.json`` exists) is not trained again, so an interrupted ablation continues where
it stopped, several processes can share one ``--out`` (each with its own ``--variants`` or
``--seeds``: the data are written once, first), and ``--collect`` only writes the tables
from the runs there are; ``--force`` retrains.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from refimpl.data.shapes import SHAPES_HARD, dataset_matches, write_shapes_dataset

from .provenance import provenance
from .train import TrainConfig, parse_model_kw, train

METRICS = ("AP", "AP50", "AP75")  # what the paper's Table 2 reports (mask AP)


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
# The paired differences the tables report: (variant, baseline) run on the same seed.
COMPARISONS = (
    ("roiwarp-max", "roipool"),
    ("roiwarp-avg", "roipool"),
    ("roialign-max", "roipool"),
    ("roialign-avg", "roipool"),
    ("roialign-avg", "roiwarp-avg"),
    ("sigmoid", "softmax"),
)

# Data and training per size. ``train``/``val``: images; the rest are TrainConfig fields.
SIZES = {
    "smoke": {"train": 8, "val": 4, "iters": 2, "batch_size": 2, "warmup_iters": 1, "lr": 0.01},
    "cpu": {"train": 1000, "val": 500, "iters": 800, "batch_size": 8, "warmup_iters": 50,
            "lr": 0.02, "clip_grad_norm": 10.0,
            "model_kwargs": {"box_batch_size_per_image": 64}},
    "full": {"train": 5000, "val": 500, "iters": 10000, "batch_size": 16, "warmup_iters": 200,
             "lr": 0.04, "clip_grad_norm": 10.0, "workers": 4},
}  # fmt: skip


def run_dir(out, slug: str, seed: int) -> Path:
    return Path(out) / "runs" / slug / f"seed{seed}"


def _settings(size: str, model: str, model_kwargs: dict | None, overrides: dict | None):
    settings = {**SIZES[size], **(overrides or {})}
    n_train, n_val = settings.pop("train"), settings.pop("val")
    if model != "small":  # the sizes' model options are maskrcnn_small's
        settings.pop("model_kwargs", None)
    kw = {**settings.pop("model_kwargs", {}), **(model_kwargs or {})}
    return settings, kw, n_train, n_val


def _chosen(variants) -> list[Variant]:
    unknown = set(variants) - set(VARIANT_SLUGS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; choose from {VARIANT_SLUGS}")
    return [v for v in VARIANTS if v.slug in variants]


def run_ablation(
    out,
    size: str = "smoke",
    variants=VARIANT_SLUGS,
    model: str = "small",
    model_kwargs: dict | None = None,
    device: str = "cpu",
    seeds=(0,),
    force: bool = False,
    progress: bool = True,
    overrides: dict | None = None,
    data_seed: int = 0,
    threads: int | None = None,
    train_missing: bool = True,
) -> dict:
    """Train and evaluate each variant once per seed; write and return the tables' data.

    ``train_missing=False`` trains nothing: the report covers the runs already in ``out``."""
    out = Path(out)
    settings, kw, n_train, n_val = _settings(size, model, model_kwargs, overrides)
    chosen = _chosen(variants)
    seeds = [int(s) for s in seeds]
    data = out / "data"
    if train_missing and not (
        dataset_matches(data, "train", n_train, data_seed, SHAPES_HARD)
        and dataset_matches(data, "val", n_val, data_seed, SHAPES_HARD)
    ):
        write_shapes_dataset(data, n_train, n_val, data_seed, SHAPES_HARD)
    trained = {v.slug for v in chosen if v.same_as not in {c.slug for c in chosen}}
    for v in chosen:
        if v.slug not in trained or not train_missing:
            continue
        for seed in seeds:
            rdir = run_dir(out, v.slug, seed)
            if (rdir / "metrics.json").is_file() and not force:
                continue
            t0 = time.perf_counter()
            cfg = TrainConfig(
                data=str(data), out=str(rdir), model=model, device=device, seed=seed,
                model_kwargs=dict(kw), progress=progress, threads=threads,
                log_every=max(1, settings.get("iters", 100) // 50),
                **{k: v.options[k] for k in ("roi_op", "pool_mode", "mask_loss") if k in v.options},
                **settings,
            )  # fmt: skip
            rdir.mkdir(parents=True, exist_ok=True)
            started = provenance()
            train(cfg)
            started["variant_wall_s"] = round(time.perf_counter() - t0, 1)
            (rdir / "provenance.json").write_text(json.dumps(started, indent=2) + "\n")
    report = collect(out, size, chosen, seeds, model, settings, kw, n_train, n_val, data_seed)
    (out / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "ablation.md").write_text(markdown_tables(report))
    return report


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min, max and count, in AP points."""
    pts = [100 * v for v in values]
    return {
        "mean": round(statistics.fmean(pts), 2),
        "std": round(statistics.stdev(pts), 2) if len(pts) > 1 else 0.0,
        "min": round(min(pts), 2),
        "max": round(max(pts), 2),
        "n": len(pts),
    }


def _read_run(rdir: Path) -> dict | None:
    path = rdir / "metrics.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    prov = rdir / "provenance.json"
    return {
        "segm": {k: m["segm"][k] for k in METRICS} if m.get("segm") else None,
        "bbox": {k: m["bbox"][k] for k in METRICS} if m.get("bbox") else None,
        "iterations": m.get("iteration"),
        "wall_s": m.get("wall_s"),
        "provenance": json.loads(prov.read_text()) if prov.is_file() else None,
    }


def collect(out, size, chosen, seeds, model, settings, kw, n_train, n_val, data_seed) -> dict:
    """Every finished run of the chosen variants and seeds, the spreads and paired differences."""
    results: dict[str, dict] = {}
    for v in chosen:
        source = v.same_as if v.same_as in {c.slug for c in chosen} else v.slug
        runs = {s: _read_run(run_dir(out, source, s)) for s in seeds}
        runs = {s: r for s, r in runs.items() if r and r["segm"]}
        entry = {"runs": {str(s): r for s, r in runs.items()}}
        if source != v.slug:
            entry["same_run_as"] = source
        if runs:
            entry["segm"] = {k: spread([r["segm"][k] for r in runs.values()]) for k in METRICS}
        results[v.slug] = entry
    paired = {}
    for a, b in COMPARISONS:
        if a in results and b in results:
            ra, rb = results[a]["runs"], results[b]["runs"]
            common = sorted(set(ra) & set(rb), key=int)
            if common:
                paired[f"{a} - {b}"] = {
                    k: spread([ra[s]["segm"][k] - rb[s]["segm"][k] for s in common])
                    for k in METRICS
                } | {"seeds": [int(s) for s in common]}
    return {
        "size": size,
        "seeds": seeds,
        "data_seed": data_seed,
        "model": model,
        "dataset": dataclasses.asdict(SHAPES_HARD) | {"train": n_train, "val": n_val},
        "settings": settings,
        "model_kwargs": kw,
        "results": results,
        "paired": paired,
        "collected_by": provenance(),
    }


def _cell(stats: dict | None) -> str:
    if not stats:
        return "-"
    if stats["n"] == 1:
        return f"{stats['mean']:.1f}"
    return f"{stats['mean']:.1f} ± {stats['std']:.1f}"


def _row(entry: dict) -> list[str]:
    segm = entry.get("segm") or {}
    return [_cell(segm.get(k)) for k in METRICS]


def _paper(v: Variant) -> str:
    return " | ".join(f"{p:.1f}" for p in v.paper)


def _table_2c(res: dict) -> list[str]:
    lines = [
        "## Table 2c: RoIAlign",
        "",
        "| | align? | bilinear? | agg. | AP | AP50 | AP75 | paper AP | paper AP50 | paper AP75 |",
        "|---|:-:|:-:|:-:|--:|--:|--:|--:|--:|--:|",
    ]
    for v in VARIANTS:
        if v.table == "2c" and v.slug in res:
            cells = " | ".join([*v.columns, *_row(res[v.slug])])
            lines.append(f"| {v.name} | {cells} | {_paper(v)} |")
    return lines


def _table_2b(res: dict) -> list[str]:
    lines = [
        "## Table 2b: multinomial vs independent masks",
        "",
        "| | AP | AP50 | AP75 | paper AP | paper AP50 | paper AP75 |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for v in VARIANTS:
        if v.table == "2b" and v.slug in res:
            same = res[v.slug].get("same_run_as")
            note = f" (the {same} runs)" if same else ""
            lines.append(f"| {v.name}{note} | {' | '.join(_row(res[v.slug]))} | {_paper(v)} |")
    return lines


def _paired_table(paired: dict) -> list[str]:
    lines = [
        "## Paired differences (same seed, same data), in AP points: mean (min to max)",
        "",
        "| difference | AP | AP50 | AP75 | seeds |",
        "|---|--:|--:|--:|--:|",
    ]
    for name, d in paired.items():
        cells = [f"{d[k]['mean']:+.1f} ({d[k]['min']:+.1f} to {d[k]['max']:+.1f})" for k in METRICS]
        lines.append(f"| {name} | {' | '.join(cells)} | {len(d['seeds'])} |")
    return lines


def _runs_table(res: dict) -> list[str]:
    lines = [
        "## Every run",
        "",
        "| variant | seed | AP | AP50 | AP75 | iterations | wall s |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for v in VARIANTS:
        if v.slug in res and "same_run_as" not in res[v.slug]:
            for seed, r in res[v.slug]["runs"].items():
                aps = " | ".join(f"{100 * r['segm'][k]:.1f}" for k in METRICS)
                lines.append(
                    f"| {v.slug} | {seed} | {aps} | {r['iterations']} | {r['wall_s']:.0f} |"
                )
    return lines


def markdown_tables(report: dict) -> str:
    """Tables 2c and 2b as in the paper (mask AP in %, mean ± std over the seeds), ours beside
    the paper's COCO numbers, then the paired differences and every run."""
    res, s = report["results"], report["settings"]
    lines = [
        f"# RoI operator and mask loss ablations ({report['size']} size, shapes-hard)",
        "",
        f"`maskrcnn_small`, {report['dataset']['train']} training and "
        f"{report['dataset']['val']} validation images (data seed {report['data_seed']}), "
        f"{s.get('iters')} iterations of {s.get('batch_size')} images, training seeds "
        f"{', '.join(map(str, report['seeds']))}. Mask AP (COCO 0.5:0.95), AP50, AP75 in %: "
        "mean ± sample standard deviation over the seeds. Paper: Mask R-CNN Table 2, COCO "
        "minival, ResNet-50-C4 (another dataset and model: compare the ordering and the gaps, "
        "not the values).",
        "",
        *_table_2c(res),
        "",
        *_table_2b(res),
    ]
    if report.get("paired"):
        lines += ["", *_paired_table(report["paired"])]
    lines += ["", *_runs_table(res)]
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    parser.add_argument("--data-seed", type=int, default=0, help="the dataset's seed")
    parser.add_argument("--iters", type=int, help="override the size's iterations")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: all cores)")
    parser.add_argument("--force", action="store_true", help="retrain finished runs")
    parser.add_argument("--collect", action="store_true",
                        help="train nothing: write the tables from the finished runs")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true")


def main(args) -> int:
    overrides = {"iters": args.iters} if args.iters else {}
    report = run_ablation(
        args.out, args.size, args.variants, args.model, parse_model_kw(args.model_kw),
        args.device, args.seeds, args.force, not args.no_progress, overrides, args.data_seed,
        args.threads, train_missing=not args.collect,
    )  # fmt: skip
    print(markdown_tables(report))
    print(f"wrote {Path(args.out) / 'ablation.md'} and ablation.json")
    return 0
