"""Model benchmark: ``python -m refimpl bench model`` (needs torchvision for the reference).

One training step and one inference pass of our Mask R-CNN against torchvision's
``maskrcnn_resnet50_fpn`` with the same weights (ours built by ``from_torchvision`` from
torchvision's randomly initialised state dict) and the same settings, in the same process,
interleaved, median of ``--repeats`` runs after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def _targets(torch, n_images: int, size: int, generator):
    targets = []
    for _ in range(n_images):
        xy = torch.rand(4, 2, generator=generator) * size * 0.6
        wh = torch.rand(4, 2, generator=generator) * size * 0.3 + size * 0.1
        boxes = torch.cat([xy, xy + wh], 1)
        masks = torch.zeros(4, size, size, dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.round().int().tolist(), strict=True):
            m[y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes, "labels": torch.randint(1, 91, (4,)), "masks": masks})
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refimpl bench model", description=__doc__)
    parser.add_argument("--size", type=int, default=320, help="image side (min_size = max_size)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the result")
    args = parser.parse_args(argv)

    import torch
    import torchvision

    from refimpl.model.torchvision_weights import from_torchvision

    torch.manual_seed(0)
    settings = {"min_size": args.size, "max_size": args.size}
    theirs = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, **settings
    )
    ours = from_torchvision(theirs.state_dict(), **settings)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, args.size, args.size, generator=g) for _ in range(args.images)]
    targets = _targets(torch, args.images, args.size, g)

    def train_step(model):
        def step():
            model.train()
            losses = model(images, targets)
            sum(losses.values()).backward()
            model.zero_grad(set_to_none=True)

        return step

    def infer(model):
        def run():
            model.eval()
            with torch.no_grad():
                model(images)

        return run

    rows = []
    for name, make in (("training step", train_step), ("inference", infer)):
        calls = {"torchvision": make(theirs), "refimpl": make(ours)}
        for fn in calls.values():
            fn()
        times = {k: [] for k in calls}
        for _ in range(args.repeats):
            for k, fn in calls.items():
                start = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - start)
        tv, us = (statistics.median(times[k]) * 1e3 for k in ("torchvision", "refimpl"))
        rows.append({"pass": name, "torchvision_ms": tv, "refimpl_ms": us})
        print(f"{name}: torchvision {tv:.0f} ms, refimpl {us:.0f} ms", flush=True)
    header = (
        f"maskrcnn_resnet50_fpn, {args.images} images {args.size}x{args.size}, CPU, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), torchvision "
        f"{torchvision.__version__}, median of {args.repeats}"
    )
    result = {"header": header, "rows": rows}
    print()
    print(format_model(result))
    if args.json:
        from refimpl.engine.provenance import provenance

        result["provenance"] = provenance()
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def format_model(result: dict) -> str:
    """The header line and a markdown table: each pass, both times and their ratio."""
    lines = [result["header"], "", "| pass | torchvision ms | refimpl ms | speed ratio |",
             "|---|---:|---:|---:|"]  # fmt: skip
    for r in result["rows"]:
        tv, us = r["torchvision_ms"], r["refimpl_ms"]
        lines.append(f"| {r['pass']} | {tv:.0f} | {us:.0f} | {tv / us:.2f}x |")
    return "\n".join(lines)
