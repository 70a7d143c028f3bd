"""The pictures of lessons 6-13 (compiled kernels, the model, training, ablations), so that
the notebooks hold prose, maths and calls only. Like :mod:`refimpl.course.figures`, every
function returns a closed ``matplotlib`` figure that the notebook shows as a cell's result.

Images are ``[H, W, 3]`` floats in ``[0, 1]`` (or ``[3, H, W]`` tensors, converted); boxes are
``(x1, y1, x2, y2)`` in image pixels, drawn on the continuous grid (pixel ``i`` covers
``[i, i + 1)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patches
from matplotlib.figure import Figure

PALETTE = plt.get_cmap("tab10").colors


def _done(fig: Figure) -> Figure:
    fig.tight_layout()
    plt.close(fig)
    return fig


def _image(img) -> np.ndarray:
    """``[H, W, 3]`` float in [0, 1] from an array or a ``[3, H, W]`` tensor."""
    a = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    a = a.astype(np.float64)
    if a.max() > 1.5:
        a = a / 255.0
    return np.clip(a, 0, 1)


def _box(ax, box, color, lw=1.5, ls="-", alpha=1.0, label=None) -> None:
    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(
        patches.Rectangle(
            (x1, y1), x2 - x1, y2 - y1, fill=False, ec=color, lw=lw, ls=ls, alpha=alpha
        )
    )
    if label:
        ax.text(
            x1,
            y1 - 1,
            label,
            color="white",
            fontsize=7,
            va="bottom",
            bbox={"fc": color, "ec": "none", "pad": 1, "alpha": 0.8},
        )


def _show(ax, img, title: str | None = None) -> None:
    a = _image(img)
    ax.imshow(a, extent=(0, a.shape[1], a.shape[0], 0), interpolation="nearest")
    ax.set_xlim(0, a.shape[1])
    ax.set_ylim(a.shape[0], 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)


# --- lesson 6: compiled kernels ----------------------------------------------------------------


def speed_bars(times: Mapping[str, Mapping[str, float]], title: str = "") -> Figure:
    """Grouped bars on a log scale: ``times[implementation][operation]`` in seconds."""
    names = list(times)
    ops = list(dict.fromkeys(op for t in times.values() for op in t))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / max(len(names), 1)
    for n, name in enumerate(names):
        xs = [i + (n - (len(names) - 1) / 2) * width for i in range(len(ops))]
        ys = [1e3 * times[name].get(op, np.nan) for op in ops]
        bars = ax.bar(xs, ys, width, label=name, color=PALETTE[n % 10])
        for b, y in zip(bars, ys, strict=True):
            if np.isfinite(y):
                ax.text(
                    b.get_x() + b.get_width() / 2,
                    y,
                    f"{y:.3g}",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(range(len(ops)), ops)
    ax.set_yscale("log")
    ax.set_ylabel("milliseconds (log scale)")
    ax.legend(fontsize=8, ncols=len(names))
    if title:
        ax.set_title(title, fontsize=10)
    return _done(fig)


def interleaving(steps: Sequence[tuple[str, str, float]], title: str) -> Figure:
    """Two threads' read / add / write steps in time order and the value in memory after each:
    ``steps`` holds ``(thread, action, memory)``."""
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(steps) + 0.9))
    threads = sorted({s[0] for s in steps})
    for t, (thread, action, memory) in enumerate(steps):
        col = threads.index(thread)
        ax.text(
            0.05 + 0.45 * col,
            -t,
            action,
            fontsize=9,
            family="monospace",
            color=PALETTE[col],
            va="center",
        )
        ax.text(0.95, -t, f"{memory:g}", fontsize=9, family="monospace", va="center", ha="right")
    for col, thread in enumerate(threads):
        ax.text(0.05 + 0.45 * col, 1, thread, fontsize=10, weight="bold", color=PALETTE[col])
    ax.text(0.95, 1, "memory", fontsize=10, weight="bold", ha="right")
    ax.set_xlim(0, 1)
    ax.set_ylim(-len(steps) + 0.4, 1.6)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    return _done(fig)


# --- lesson 9: backbone, FPN, anchors ----------------------------------------------------------


def feature_pyramid(image, levels: Mapping[str, object], title: str = "") -> Figure:
    """The image and, per level, the mean absolute activation over channels, each drawn over
    the image's extent (so that a cell of stride s covers s x s pixels)."""
    fig, axes = plt.subplots(1, len(levels) + 1, figsize=(2.1 * (len(levels) + 1), 2.4))
    a = _image(img=image)
    _show(axes[0], a, "image")
    h, w = a.shape[:2]
    for ax, (name, f) in zip(axes[1:], levels.items(), strict=True):
        f = f.detach().cpu().numpy() if hasattr(f, "detach") else np.asarray(f)
        act = np.abs(f[0]).mean(axis=0)
        ax.imshow(act, extent=(0, w, h, 0), cmap="magma", interpolation="nearest")
        stride = h // act.shape[0]
        ax.set_title(f"{name}: {act.shape[0]}x{act.shape[1]}, stride {stride}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return _done(fig)


def anchors_on_image(
    image,
    gt_boxes,
    best_anchors,
    level_anchors: Mapping[str, object] | None = None,
    ious=None,
    centre: tuple[float, float] | None = None,
) -> Figure:
    """Left: the anchors of every level centred at one position (``level_anchors``: name ->
    ``[A, 4]``, drawn around ``centre``). Right: each GT box (solid) and its best anchor
    (dashed, with the IoU)."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    a = _image(image)
    h, w = a.shape[:2]
    _show(axes[0], a, "the anchors of one position, per level")
    if level_anchors:
        cx, cy = centre if centre is not None else (w / 2, h / 2)
        for n, (name, anchors) in enumerate(level_anchors.items()):
            anchors = np.asarray(anchors, dtype=np.float64)
            for i, box in enumerate(anchors):
                _box(
                    axes[0],
                    box + [cx, cy, cx, cy],
                    PALETTE[n % 10],
                    lw=1.2,
                    label=name if i == 0 else None,
                )
        axes[0].set_xlim(-40, w + 40)
        axes[0].set_ylim(h + 40, -40)
    _show(axes[1], a, "GT boxes (solid) and their best anchors (dashed)")
    for i, (gt, best) in enumerate(
        zip(np.asarray(gt_boxes), np.asarray(best_anchors), strict=True)
    ):
        c = PALETTE[i % 10]
        _box(axes[1], gt, c, lw=2)
        label = f"IoU {float(ious[i]):.2f}" if ious is not None else None
        _box(axes[1], best, c, lw=1.5, ls="--", label=label)
    return _done(fig)


# --- lesson 10: proposals ----------------------------------------------------------------------


def proposals_nms(image, before, before_scores, after, after_scores, gt_boxes=None) -> Figure:
    """Proposals before and after NMS, coloured by score (darker: lower); GT boxes in white."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    cmap = plt.get_cmap("viridis")
    for ax, boxes, scores, title in (
        (axes[0], before, before_scores, f"before NMS: {len(before)} proposals"),
        (axes[1], after, after_scores, f"after NMS: {len(after)} proposals"),
    ):
        _show(ax, image, title)
        boxes = np.asarray(boxes, dtype=np.float64)
        scores = np.asarray(scores, dtype=np.float64)
        for i in np.argsort(scores):
            _box(ax, boxes[i], cmap(float(scores[i])), lw=1.0, alpha=0.9)
        for gt in [] if gt_boxes is None else np.asarray(gt_boxes):
            _box(ax, gt, "white", lw=1.2, ls=":")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
    fig.colorbar(sm, ax=axes, shrink=0.7, label="objectness")
    plt.close(fig)
    return fig


def anchor_labels(image, anchors, labels, title: str = "") -> Figure:
    """Anchors labelled positive (green), and a sample of the negatives (red, thin)."""
    fig, ax = plt.subplots(figsize=(4, 4))
    _show(ax, image, title)
    anchors, labels = np.asarray(anchors, dtype=np.float64), np.asarray(labels)
    neg = np.flatnonzero(labels == 0)
    for i in neg[:: max(1, len(neg) // 40)]:
        _box(ax, anchors[i], "#d62728", lw=0.5, alpha=0.6)
    for i in np.flatnonzero(labels == 1):
        _box(ax, anchors[i], "#2ca02c", lw=1.2)
    return _done(fig)


# --- lesson 11: RoI heads ----------------------------------------------------------------------


def roi_levels(image, boxes, levels, names: Sequence[str] = ("P2", "P3", "P4", "P5")) -> Figure:
    """RoIs coloured by the pyramid level they pool from (FPN eq. 1)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    _show(ax, image, "RoIs by the level they pool from")
    boxes, levels = np.asarray(boxes, dtype=np.float64), np.asarray(levels)
    for b, lv in zip(boxes, levels, strict=True):
        _box(ax, b, PALETTE[int(lv) % 10], lw=1.2)
    handles = [patches.Patch(color=PALETTE[i], label=n) for i, n in enumerate(names)]
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    return _done(fig)


def sampled_rois(image, boxes, labels, gt_boxes=None) -> Figure:
    """Sampled RoIs: foreground (coloured by class) and a subset of the background (grey)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    boxes, labels = np.asarray(boxes, dtype=np.float64), np.asarray(labels)
    n_fg = int((labels > 0).sum())
    _show(ax, image, f"{n_fg} foreground, {len(labels) - n_fg} background RoIs")
    bg = np.flatnonzero(labels == 0)
    for i in bg[:: max(1, len(bg) // 30)]:
        _box(ax, boxes[i], "0.3", lw=0.6, alpha=0.7)
    for i in np.flatnonzero(labels > 0):
        _box(ax, boxes[i], PALETTE[int(labels[i]) % 10], lw=1.2)
    for gt in [] if gt_boxes is None else np.asarray(gt_boxes):
        _box(ax, gt, "white", lw=1.5, ls=":")
    return _done(fig)


def mask_targets(crops: Sequence[np.ndarray], titles: Sequence[str]) -> Figure:
    """Mask targets (or predictions) of several RoIs, as M x M grey images."""
    fig, axes = plt.subplots(1, len(crops), figsize=(1.9 * len(crops), 2.1))
    axes = np.atleast_1d(axes)
    for ax, crop, title in zip(axes, crops, titles, strict=True):
        ax.imshow(np.asarray(crop), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return _done(fig)


# --- lesson 12: training and inference ----------------------------------------------------------


def loss_curves(records: Sequence[Mapping[str, float]], names: Sequence[str]) -> Figure:
    """The losses of a training run against the iteration (``records``: metrics.jsonl rows)."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    rows = [r for r in records if "iter" in r and "loss" in r]
    its = [r["iter"] for r in rows]
    for n, name in enumerate(["loss", *names]):
        ax.plot(its, [r[name] for r in rows], label=name, color="k" if n == 0 else PALETTE[n],
                lw=2 if n == 0 else 1.2)  # fmt: skip
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncols=3)
    ax.grid(alpha=0.3)
    return _done(fig)


def mask_pasting(image, mask, box, pasted) -> Figure:
    """A predicted M x M mask, its box on the image, and the mask pasted into the image."""
    fig, axes = plt.subplots(1, 3, figsize=(8, 2.9))
    m = np.asarray(mask)
    axes[0].imshow(m, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title(f"predicted {m.shape[0]}x{m.shape[1]} mask", fontsize=9)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    _show(axes[1], image, "its box")
    _box(axes[1], box, "yellow", lw=1.5)
    a = _image(image)
    p = np.asarray(pasted)
    _show(axes[2], a * 0.4 + 0.6 * (p[..., None] >= 0.5) * np.array([1.0, 0.85, 0.0]),
          "pasted, thresholded at 0.5")  # fmt: skip
    _box(axes[2], box, "yellow", lw=1.0, ls=":")
    return _done(fig)


# --- lesson 13: ablations ----------------------------------------------------------------------


def _bars_from_zero(ax, names, values, color, ylabel, errors=None, top=None) -> None:
    """One quantity on one axis, starting at zero (no cut axis exaggerates a gap)."""
    xs = np.arange(len(names))
    ax.bar(xs, values, 0.6, color=color, yerr=errors, capsize=3 if errors is not None else 0)
    ends = np.asarray(values, float) + (0.0 if errors is None else np.asarray(errors, float))
    highest = np.nanmax(ends) if np.isfinite(ends).any() else 0.0
    ax.set_ylim(0, top if top is not None else max(1.12 * highest, 1.0))  # all-zero runs too
    ax.set_ylabel(ylabel)
    ax.set_xticks(xs, names, fontsize=8, rotation=20, ha="right")
    for x, v, end in zip(xs, values, ends, strict=True):
        if np.isfinite(v):  # the label above the error bar, not on it
            ax.annotate(f"{v:.3g}", (x, end), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 2), textcoords="offset points")  # fmt: skip


def round_trip_bars(
    scores: Mapping[str, float], paper: Mapping[str, float] | None = None
) -> Figure:
    """Mean IoU of the feature-level mask round trip per RoI operator and, in its own panel,
    the paper's mask AP (Table 2c): one quantity per axis, both axes from zero."""
    names = list(scores)
    panels = 2 if paper else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.2), squeeze=False)
    _bars_from_zero(axes[0, 0], names, [scores[n] for n in names], PALETTE[0],
                    "mean mask IoU (round trip)", top=1.0)  # fmt: skip
    axes[0, 0].set_title("ours: information let through", fontsize=9)
    if paper:
        known = [n for n in names if n in paper]
        _bars_from_zero(axes[0, 1], known, [paper[n] for n in known], PALETTE[1],
                        "mask AP (COCO)")  # fmt: skip
        axes[0, 1].set_title("paper, Table 2c (ResNet-50-C4)", fontsize=9)
    return _done(fig)


def ablation_bars(report: Mapping, metrics: Sequence[str] = ("AP", "AP75")) -> Figure:
    """An ablation report (:func:`refimpl.engine.ablate.run_ablation`): per metric, each
    variant's mean mask AP with its sample standard deviation over the training seeds as an
    error bar, and the paper's numbers in a panel of their own; every axis from zero."""
    from refimpl.engine.ablate import METRICS, VARIANTS

    variants = [v for v in VARIANTS if v.slug in report["results"]]
    labels = [v.slug for v in variants]
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4.2 * (len(metrics) + 1), 3.4))
    for ax, (i, metric) in zip(axes[:-1], enumerate(metrics), strict=True):
        stats = [report["results"][v.slug].get("segm", {}).get(metric) for v in variants]
        means = [s["mean"] if s else np.nan for s in stats]
        errors = [s["std"] if s else 0.0 for s in stats]
        _bars_from_zero(ax, labels, means, PALETTE[i], f"mask {metric} (%)", errors=errors)
        ax.set_title(f"ours: mean ± std over {len(report['seeds'])} seeds", fontsize=9)
    paper = [v.paper[METRICS.index("AP")] for v in variants]
    _bars_from_zero(axes[-1], labels, paper, PALETTE[len(metrics)], "mask AP (%)")
    axes[-1].set_title("paper, COCO (ResNet-50-C4)", fontsize=9)
    return _done(fig)
