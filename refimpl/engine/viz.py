"""The pictures: images with boxes, masks, labels and scores; anchors; prediction grids.

Shared by ``python -m refimpl predict``, the demo and the lessons. Figures are made with
``matplotlib.figure.Figure`` rather than pyplot, so they draw without a display (servers, CI)
and nothing here changes the global matplotlib backend; a notebook shows a returned figure
like any other. Every drawing function takes an ``Axes`` and accepts tensors or arrays.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

# A qualitative palette (matplotlib's tab10 without its grey), cycled over instances.
PALETTE = [
    (0.12, 0.47, 0.71),
    (1.00, 0.50, 0.05),
    (0.17, 0.63, 0.17),
    (0.84, 0.15, 0.16),
    (0.58, 0.40, 0.74),
    (0.55, 0.34, 0.29),
    (0.89, 0.47, 0.76),
    (0.74, 0.74, 0.13),
    (0.09, 0.75, 0.81),
]


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def to_image_array(image) -> np.ndarray:
    """Tensor ``[3, H, W]`` in 0..1, or ``[H, W, 3]`` uint8/float -> float ``[H, W, 3]`` in 0..1."""
    a = _numpy(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.dtype == np.uint8:
        a = a / 255.0
    if a.ndim == 3 and a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.clip(a.astype(np.float64), 0.0, 1.0)


def colors(n: int, offset: int = 0) -> list[tuple[float, float, float]]:
    return [PALETTE[(offset + i) % len(PALETTE)] for i in range(n)]


def new_figure(nrows: int = 1, ncols: int = 1, size: float = 3.0):
    """``(figure, axes [nrows, ncols])`` with square panels of ``size`` inches, axes off."""
    fig = Figure(figsize=(size * ncols, size * nrows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def show_image(ax, image, title: str | None = None) -> None:
    ax.imshow(to_image_array(image), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def _masks_array(masks, threshold: float) -> np.ndarray:
    m = _numpy(masks)
    if m.ndim == 4:  # the model's [D, 1, H, W]
        m = m[:, 0]
    if m.ndim == 2:
        m = m[None]
    return m >= threshold if m.dtype.kind == "f" else m.astype(bool)


def draw_masks(ax, masks, colors_=None, alpha: float = 0.5, threshold: float = 0.5, outline=True):
    """Overlay instance masks (``[n, H, W]`` or ``[n, 1, H, W]``; float ones are thresholded)."""
    m = _masks_array(masks, threshold)
    if not len(m):
        return
    cs = colors_ or colors(len(m))
    overlay = np.zeros((*m.shape[1:], 4))
    for mask, c in zip(m, cs, strict=False):
        overlay[mask] = (*c, alpha)
    ax.imshow(overlay, interpolation="nearest")
    if outline:
        for mask, c in zip(m, cs, strict=False):
            if mask.any() and not mask.all():
                ax.contour(mask.astype(float), levels=[0.5], colors=[c], linewidths=1.0)


def draw_boxes(
    ax,
    boxes,
    labels=None,
    scores=None,
    class_names=None,
    colors_=None,
    linewidth: float = 1.5,
    linestyle: str = "-",
    fontsize: float = 7,
) -> None:
    """xyxy boxes with an optional ``"name score"`` caption at the top-left corner."""
    b = _numpy(boxes).reshape(-1, 4)
    labels = None if labels is None else _numpy(labels)
    scores = None if scores is None else _numpy(scores)
    cs = colors_ or colors(len(b))
    for i, (x1, y1, x2, y2) in enumerate(b):
        c = cs[i % len(cs)]
        ax.add_patch(
            Rectangle(
                (x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c, lw=linewidth, ls=linestyle
            )
        )
        caption = []
        if labels is not None:
            label = int(labels[i])
            names = class_names or []
            caption.append(names[label] if label < len(names) else str(label))
        if scores is not None:
            caption.append(f"{float(scores[i]):.2f}")
        if caption:
            ax.text(
                x1,
                y1,
                " ".join(caption),
                fontsize=fontsize,
                color="white",
                va="bottom",
                bbox={"facecolor": c, "alpha": 0.8, "pad": 1, "edgecolor": "none"},
            )


def draw_anchors(ax, anchors, color="yellow", max_anchors: int = 200, linewidth: float = 0.6):
    """Anchors (xyxy), at most ``max_anchors`` of them, evenly picked so the grid stays visible."""
    a = _numpy(anchors).reshape(-1, 4)
    if len(a) > max_anchors:
        a = a[np.linspace(0, len(a) - 1, max_anchors).round().astype(int)]
    draw_boxes(ax, a, colors_=[color], linewidth=linewidth)


def draw_instances(
    ax,
    image,
    instances: dict,
    class_names=None,
    score_threshold: float = 0.5,
    title: str | None = None,
) -> int:
    """An image with a target's or a prediction's masks, boxes, labels (and scores).

    ``instances`` holds ``boxes``, optionally ``labels``, ``scores``, ``masks``; instances
    scoring below ``score_threshold`` are left out. Returns how many were drawn.
    """
    show_image(ax, image, title)
    boxes = _numpy(instances.get("boxes", np.zeros((0, 4)))).reshape(-1, 4)
    keep = np.ones(len(boxes), bool)
    scores = instances.get("scores")
    if scores is not None:
        keep = _numpy(scores) >= score_threshold

    def sel(key):
        v = instances.get(key)
        return None if v is None else _numpy(v)[keep]

    cs = colors(int(keep.sum()))
    if instances.get("masks") is not None:
        draw_masks(ax, sel("masks"), cs)
    draw_boxes(ax, boxes[keep], sel("labels"), sel("scores"), class_names, cs)
    return int(keep.sum())


def detection_grid(
    images,
    outputs,
    targets=None,
    class_names=None,
    score_threshold: float = 0.5,
    size: float = 3.0,
    columns: int = 4,
) -> Figure:
    """Predictions for several images (and, given targets, the ground truth above each)."""
    n = len(images)
    cols = min(columns, n)
    blocks = -(-n // cols)
    per_block = 2 if targets is not None else 1
    fig, axes = new_figure(blocks * per_block, cols, size)
    for i in range(n):
        r, c = divmod(i, cols)
        if targets is not None:
            draw_instances(axes[r * 2, c], images[i], targets[i], class_names, title="ground truth")
        ax = axes[r * per_block + per_block - 1, c]
        shown = draw_instances(ax, images[i], outputs[i], class_names, score_threshold)
        ax.set_title(f"prediction ({shown} with score >= {score_threshold:g})", fontsize=8)
    return fig
