"""The pictures the lessons draw, so that the notebooks hold prose, maths and calls only.

Every function returns a closed ``matplotlib`` figure: the notebook shows it once as the
cell's result (and nothing leaks elsewhere).

Coordinates. Feature maps are drawn on the continuous image grid scaled to the map: pixel
``i`` covers ``[i, i + 1)`` and its centre is ``i + 0.5``; a box edge ``x1`` is drawn at
``x1 * spatial_scale``. Bilinear sampling indexes pixel *values*, which sit at the centres:
a sample at sampling coordinate ``s`` is drawn at ``s + 0.5``. So ``aligned=True`` samples
sit inside their bins and ``aligned=False`` ones half a pixel off.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patches
from matplotlib.figure import Figure

from refimpl.ops import geometry
from refimpl.ops.python import roi_pool_backward, roi_pool_forward

F = np.float64
CLASS_COLORS = {"circle": "#d62728", "square": "#1f77b4", "triangle": "#2ca02c"}
INSTANCE_COLORS = ["#e6194b", "#ffbf00", "#4363d8", "#3cb44b", "#911eb4", "#f58231"]
BIN_COLORS = plt.get_cmap("tab10").colors


def _done(fig: Figure) -> Figure:
    fig.tight_layout()
    plt.close(fig)
    return fig


def _pair(output_size) -> tuple[int, int]:
    if isinstance(output_size, (tuple, list)):
        return int(output_size[0]), int(output_size[1])
    return int(output_size), int(output_size)


def _grid(ax, height: int, width: int, *, centres: bool = False, color: str = "0.8") -> None:
    """Pixel boundaries of an ``height x width`` map (and optionally its pixel centres)."""
    for v in range(height + 1):
        ax.axhline(v, color=color, lw=0.6, zorder=0)
    for v in range(width + 1):
        ax.axvline(v, color=color, lw=0.6, zorder=0)
    if centres:
        yy, xx = np.mgrid[0:height, 0:width] + 0.5
        ax.plot(xx.ravel(), yy.ravel(), ".", color="0.65", ms=3, zorder=1)
    ax.set_xlim(-0.5, width + 0.5)
    ax.set_ylim(height + 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xticks(range(0, width + 1, max(1, width // 8)))
    ax.set_yticks(range(0, height + 1, max(1, height // 8)))


def _rect(ax, x0, y0, x1, y1, **kw) -> None:
    kw.setdefault("fill", False)
    ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, **kw))


# --- lesson 1: the task ----------------------------------------------------------------------


def toy_scene(seed: int = 0, height: int = 96, width: int = 128) -> dict:
    """A small synthetic picture: two circles (one class, two instances), a square and a
    triangle, with instance masks, class names and boxes ``(x1, y1, x2, y2)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    image = np.empty((height, width, 3))
    image[:] = 0.92 - 0.25 * (yy / height)[..., None] * np.array([0.6, 0.5, 0.2])
    image += rng.normal(0, 0.02, image.shape)
    shapes = [
        ("circle", (xx - 34) ** 2 + (yy - 36) ** 2 < 17**2),
        ("circle", (xx - 58) ** 2 + (yy - 58) ** 2 < 14**2),
        ("square", (abs(xx - 98) < 15) & (abs(yy - 30) < 15)),
        ("triangle", (yy < 86) & (yy - 52 > 1.6 * abs(xx - 100))),
    ]
    colors = {"circle": (0.85, 0.3, 0.25), "square": (0.25, 0.4, 0.8), "triangle": (0.3, 0.65, 0.3)}
    masks, labels, boxes = [], [], []
    taken = np.zeros((height, width), bool)
    for name, mask in shapes:
        mask = mask & ~taken  # later shapes lie behind earlier ones
        taken |= mask
        image[mask] = np.array(colors[name]) + rng.normal(0, 0.03, (mask.sum(), 3))
        ys, xs = np.nonzero(mask)
        masks.append(mask)
        labels.append(name)
        boxes.append((xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0))
    return {
        "image": np.clip(image, 0, 1),
        "masks": np.array(masks),
        "labels": labels,
        "boxes": np.array(boxes, dtype=float),
    }


def four_tasks(scene: dict) -> Figure:
    """Classification, semantic segmentation, detection, instance segmentation of one scene."""
    image, masks, labels, boxes = scene["image"], scene["masks"], scene["labels"], scene["boxes"]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    titles = [
        "classification: what is in it",
        "semantic segmentation: a class per pixel",
        "detection: what and where (boxes)",
        "instance segmentation: which pixels,\nfor each object",
    ]
    for ax, title in zip(axes, titles, strict=True):
        ax.imshow(image)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    names = sorted(set(labels))
    axes[0].text(3, 92, ", ".join(names), color="k", fontsize=10, backgroundcolor="w")
    semantic = np.ones(image.shape)
    for mask, name in zip(masks, labels, strict=True):
        semantic[mask] = plt.matplotlib.colors.to_rgb(CLASS_COLORS[name])
    axes[1].imshow(semantic)
    for ax, with_masks in ((axes[2], False), (axes[3], True)):
        overlay = np.zeros(image.shape[:2] + (4,))
        for k, (mask, name, box) in enumerate(zip(masks, labels, boxes, strict=True)):
            color = INSTANCE_COLORS[k % len(INSTANCE_COLORS)] if with_masks else CLASS_COLORS[name]
            if with_masks:
                overlay[mask] = (*plt.matplotlib.colors.to_rgb(color), 0.6)
            x1, y1, x2, y2 = box
            _rect(ax, x1, y1, x2, y2, edgecolor=color, lw=2)
            ax.text(x1, y1 - 1.5, name, color=color, fontsize=8, weight="bold")
        ax.imshow(overlay)
    return _done(fig)


def two_stages() -> Figure:
    """Mask R-CNN as a diagram: backbone + FPN, RPN, RoIAlign, box and mask heads."""
    fig, ax = plt.subplots(figsize=(14, 4.2))
    ax.set_xlim(0, 14)
    ax.set_ylim(0, 4.2)
    ax.axis("off")

    def box(x, y, w, h, text, color):
        ax.add_patch(
            patches.FancyBboxPatch(
                (x, y), w, h, boxstyle="round,pad=0.05", fc=color, ec="0.3", lw=1
            )
        )
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)

    def arrow(x0, y0, x1, y1):
        ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", lw=1.3))

    box(0.1, 1.6, 1.3, 1.0, "image", "#eeeeee")
    box(1.9, 1.4, 1.9, 1.4, "backbone\n(ResNet)\n+ FPN", "#cfe2f3")
    box(4.3, 1.4, 1.7, 1.4, "feature maps\nP2..P6\nstrides 4..64", "#cfe2f3")
    box(6.5, 2.6, 2.0, 1.2, "RPN: anchors,\nobjectness, deltas,\nNMS", "#fce5cd")
    box(6.5, 0.4, 2.0, 1.2, "proposals\n(real-valued boxes,\nany size)", "#fce5cd")
    box(9.0, 1.4, 1.8, 1.4, "RoIAlign\n7x7 and 14x14\nper proposal", "#f4cccc")
    box(11.3, 2.5, 2.5, 1.2, "box head: class\nscores + box deltas", "#d9ead3")
    box(11.3, 0.5, 2.5, 1.2, "mask head: a 28x28\nmask per class", "#d9ead3")
    arrow(1.4, 2.1, 1.9, 2.1)
    arrow(3.8, 2.1, 4.3, 2.1)
    arrow(6.0, 2.4, 6.5, 3.1)
    arrow(7.5, 2.6, 7.5, 1.6)
    arrow(6.0, 2.0, 9.0, 2.0)
    arrow(8.5, 1.0, 9.0, 1.7)
    arrow(10.8, 2.4, 11.3, 3.0)
    arrow(10.8, 1.8, 11.3, 1.2)
    ax.text(1.0, 3.9, "stage 1: where might objects be?", fontsize=11, weight="bold")
    ax.text(9.0, 3.95, "stage 2: for each proposal", fontsize=11, weight="bold")
    ax.text(9.0, 0.05, "the RoI feature problem lives here", fontsize=9, color="#990000")
    return _done(fig)


def roi_feature_problem(scene: dict, box, stride: int) -> Figure:
    """A box in the image and on a stride-``stride`` feature map, where it cuts through cells."""
    image = scene["image"]
    height, width = image.shape[:2]
    fh, fw = math.ceil(height / stride), math.ceil(width / stride)
    x1, y1, x2, y2 = box
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    a.imshow(image, extent=(0, width, height, 0))
    for v in range(0, width + 1, stride):
        a.axvline(v, color="w", lw=0.7)
    for v in range(0, height + 1, stride):
        a.axhline(v, color="w", lw=0.7)
    _rect(a, x1, y1, x2, y2, edgecolor="k", lw=2)
    a.set_title(
        f"image {width}x{height}, box ({x1:g}, {y1:g}, {x2:g}, {y2:g}); grid: stride {stride}"
    )
    pooled = np.zeros((fh * stride, fw * stride, 3))
    pooled[:height, :width] = image
    pooled = pooled.reshape(fh, stride, fw, stride, 3).mean(axis=(1, 3))
    b.imshow(pooled, extent=(0, fw, fh, 0), alpha=0.6)  # a stand-in for the features
    _grid(b, fh, fw, centres=True)
    s = 1.0 / stride
    _rect(b, x1 * s, y1 * s, x2 * s, y2 * s, edgecolor="k", lw=2)
    b.set_title(
        f"feature map {fw}x{fh}: the box is "
        f"({x1 * s:.2f}, {y1 * s:.2f}, {x2 * s:.2f}, {y2 * s:.2f})"
    )
    return _done(fig)


# --- lesson 2: RoIPool -------------------------------------------------------------------------


def _split(lo: float, hi: float, n: int) -> list[tuple[float, float]]:
    """``[lo, hi]`` cut into ``n`` equal real-valued bins."""
    return [(lo + p * (hi - lo) / n, lo + (p + 1) * (hi - lo) / n) for p in range(n)]


def roi_pool_bins(box, spatial_scale: float, output_size) -> dict:
    """RoIPool's geometry for one box (refimpl's definition): the rounded box, and each bin's
    integer ranges ``[lo, hi)`` next to the ideal real-valued bin of the unquantized box."""
    ph_n, pw_n = _pair(output_size)
    x1, y1, x2, y2 = (F(v) for v in box)
    start_y, start_x, bin_h, bin_w = geometry.pool_box(
        F, x1, y1, x2, y2, F(spatial_scale), ph_n, pw_n
    )
    # the bins as computed, before clipping to the map (geometry.pool_bin also clips)
    rows = [
        (math.floor(F(p) * bin_h) + start_y, math.ceil(F(p + 1) * bin_h) + start_y)
        for p in range(ph_n)
    ]
    cols = [
        (math.floor(F(p) * bin_w) + start_x, math.ceil(F(p + 1) * bin_w) + start_x)
        for p in range(pw_n)
    ]
    c = [float(v * spatial_scale) for v in (x1, y1, x2, y2)]
    ideal_rows = _split(c[1], c[3], ph_n)
    ideal_cols = _split(c[0], c[2], pw_n)
    errors = [
        abs(a - b)
        for got, want in ((rows, ideal_rows), (cols, ideal_cols))
        for pair_got, pair_want in zip(got, want, strict=True)
        for a, b in zip(pair_got, pair_want, strict=True)
    ]
    end_x = geometry.c_round(x2 * spatial_scale)
    end_y = geometry.c_round(y2 * spatial_scale)
    return {
        "box": c,
        "rounded": (start_x, start_y, end_x + 1, end_y + 1),  # cells start..end inclusive
        "rows": rows,
        "cols": cols,
        "ideal_rows": ideal_rows,
        "ideal_cols": ideal_cols,
        "max_error": float(max(errors)),
    }


def roi_pool_quantization(box, spatial_scale: float, output_size, feature_shape) -> Figure:
    """RoIPool's two quantizations on a picture: the box, its rounded cells, the integer bins."""
    fh, fw = feature_shape
    g = roi_pool_bins(box, spatial_scale, output_size)
    bx1, by1, bx2, by2 = g["box"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    titles = [
        "the box on the feature map",
        "1st quantization: corners rounded,\ncells start..end inclusive",
        "2nd quantization: integer bins (floor / ceil)\n"
        f"worst edge error {g['max_error']:.2f} cells",
    ]
    for ax, title in zip(axes, titles, strict=True):
        _grid(ax, fh, fw)
        ax.set_title(title, fontsize=10)
        _rect(ax, bx1, by1, bx2, by2, edgecolor="k", lw=2, ls="--", zorder=5)
    rx1, ry1, rx2, ry2 = g["rounded"]
    for ax in axes[1:2]:
        _rect(ax, rx1, ry1, rx2, ry2, fill=True, fc="#9fc5e8", ec="#0b5394", lw=2, alpha=0.7)
    k = 0
    for i, (h0, h1) in enumerate(g["rows"]):
        for j, (w0, w1) in enumerate(g["cols"]):
            color = BIN_COLORS[k % len(BIN_COLORS)]
            k += 1
            _rect(axes[2], w0, h0, w1, h1, fill=True, fc=color, alpha=0.25, ec=color, lw=2)
            iy0, iy1 = g["ideal_rows"][i]
            ix0, ix1 = g["ideal_cols"][j]
            _rect(axes[2], ix0, iy0, ix1, iy1, ec=color, lw=1, ls=":")
    axes[2].text(0.2, fh + 0.35, "solid: bins read; dotted: where they should be", fontsize=8)
    return _done(fig)


def roi_pool_argmax(plane: np.ndarray, box, output_size, spatial_scale: float = 1.0) -> Figure:
    """RoIPool on one map: the bins and their argmax (forward), where gradients go (backward)."""
    x = np.ascontiguousarray(plane, dtype=F)[None, None]
    rois = np.array([[0.0, *box]])
    ph_n, pw_n = _pair(output_size)
    y = roi_pool_forward(x, rois, output_size, spatial_scale)
    grad = roi_pool_backward(x, rois, np.ones((1, 1, ph_n, pw_n)), output_size, spatial_scale)
    g = roi_pool_bins(box, spatial_scale, output_size)
    height, width = plane.shape
    fig, axes = plt.subplots(
        1, 3, figsize=(14, 4.3), gridspec_kw=dict(width_ratios=[1.3, 0.8, 1.3])
    )
    axes[0].imshow(plane, cmap="viridis", extent=(0, width, height, 0))
    k = 0
    for h0, h1 in g["rows"]:
        for w0, w1 in g["cols"]:
            h0c, h1c, w0c, w1c = max(h0, 0), min(h1, height), max(w0, 0), min(w1, width)
            color = BIN_COLORS[k % len(BIN_COLORS)]
            k += 1
            if h1c <= h0c or w1c <= w0c:
                continue
            _rect(axes[0], w0c, h0c, w1c, h1c, ec=color, lw=2)
            window = plane[h0c:h1c, w0c:w1c]
            a = int(np.argmax(window))
            axes[0].plot(
                w0c + a % window.shape[1] + 0.5,
                h0c + a // window.shape[1] + 0.5,
                "*",
                color=color,
                ms=13,
                mec="w",
            )
    axes[0].set_title("forward: each bin's maximum (*)")
    axes[1].imshow(y[0, 0], cmap="viridis")
    axes[1].set_title(f"output {ph_n}x{pw_n}")
    axes[2].imshow(grad[0, 0], cmap="magma", extent=(0, width, height, 0))
    axes[2].set_title("backward of all-ones: each argmax gets its bins' sum")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return _done(fig)


# --- lesson 3: RoIWarp -------------------------------------------------------------------------


def roi_warp_grid(
    box, spatial_scale: float, output_size, sampling_ratio: int, feature_shape
) -> Figure:
    """RoIWarp's grid (ours: the quantized box, bin-interior samples) next to an edge-inclusive
    (r+1) x (r+1) grid of the kind MNC's layer samples."""
    fh, fw = feature_shape
    ph_n, pw_n = _pair(output_size)
    x1, y1, x2, y2 = (F(v) for v in box)
    qx1, qy1, qx2, qy2 = geometry.warp_box(F, x1, y1, x2, y2, F(spatial_scale))
    sy, sx, bin_h, bin_w, gh, gw, _ = geometry.align_box(
        F, qx1, qy1, qx2, qy2, F(1.0), False, ph_n, pw_n, sampling_ratio
    )
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax in axes:
        _grid(ax, fh, fw, centres=True)
        s = spatial_scale
        _rect(ax, x1 * s, y1 * s, x2 * s, y2 * s, ec="k", lw=1.5, ls="--")
        # the sampled region in drawing coordinates: pixel values sit at centres (+0.5)
        _rect(
            ax,
            sx + 0.5,
            sy + 0.5,
            sx + 0.5 + pw_n * bin_w,
            sy + 0.5 + ph_n * bin_h,
            ec="#0b5394",
            lw=2,
        )
        for p in range(1, ph_n):
            ax.axhline(sy + 0.5 + p * bin_h, color="#0b5394", lw=0.8, ls=":")
        for p in range(1, pw_n):
            ax.axvline(sx + 0.5 + p * bin_w, color="#0b5394", lw=0.8, ls=":")
    ys = [
        geometry.sample_coord(F, sy, bin_h, p, i, gh) + 0.5 for p in range(ph_n) for i in range(gh)
    ]
    xs = [
        geometry.sample_coord(F, sx, bin_w, p, i, gw) + 0.5 for p in range(pw_n) for i in range(gw)
    ]
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    axes[0].plot(xx.ravel(), yy.ravel(), "o", color="#cc0000", ms=4)
    axes[0].set_title(f"ours: quantized box, {gh}x{gw} samples inside each bin")
    ey = sy + 0.5 + np.arange(ph_n + 1) * bin_h
    ex = sx + 0.5 + np.arange(pw_n + 1) * bin_w
    yy, xx = np.meshgrid(ey, ex, indexing="ij")
    axes[1].plot(xx.ravel(), yy.ravel(), "s", color="#e69138", ms=5)
    axes[1].set_title("edge-inclusive (r+1)x(r+1) grid (MNC-style)")
    return _done(fig)


def shift_response(
    shifts: np.ndarray, curves: dict[str, np.ndarray], xlabel: str, ylabel: str = "output"
) -> Figure:
    """An output of several operators as a box slides by small steps."""
    fig, ax = plt.subplots(figsize=(9, 3.8))
    for (name, values), style in zip(curves.items(), ["-", "--", "-", ":"], strict=False):
        ax.plot(shifts, values, style, lw=2, label=name, drawstyle="default")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="best", fontsize=9)
    ax.grid(alpha=0.3)
    return _done(fig)


# --- lesson 4: RoIAlign forward ------------------------------------------------------------------


def bilinear_weights(y: float, x: float) -> Figure:
    """The four neighbours of (y, x) and their weights: the area of the opposite rectangle."""
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    corners = [
        (y0, x0, (1 - ly) * (1 - lx)),
        (y0, x0 + 1, (1 - ly) * lx),
        (y0 + 1, x0, ly * (1 - lx)),
        (y0 + 1, x0 + 1, ly * lx),
    ]
    colors = ["#e06666", "#6fa8dc", "#93c47d", "#ffd966"]
    for (cy, cx, w), color in zip(corners, colors, strict=True):
        oy, ox = 2 * y0 + 1 - cy, 2 * x0 + 1 - cx  # the opposite corner
        _rect(ax, min(x, ox), min(y, oy), max(x, ox), max(y, oy), fill=True, fc=color, alpha=0.5)
        ax.plot(cx, cy, "o", color=color, ms=12, mec="k")
        ax.text(
            cx,
            cy + (-0.12 if cy == y0 else 0.2),
            f"v[{cy},{cx}]  w={w:.2f}",
            ha="center",
            fontsize=9,
        )
    ax.plot(x, y, "x", color="k", ms=10, mew=2)
    ax.text(x + 0.03, y - 0.04, f"({y:g}, {x:g})", fontsize=9)
    ax.set_xlim(x0 - 0.35, x0 + 1.35)
    ax.set_ylim(y0 + 1.35, y0 - 0.35)
    ax.set_aspect("equal")
    ax.set_title("each corner's weight = the area opposite it")
    return _done(fig)


def bilinear_profile(values: np.ndarray) -> Figure:
    """Bilinear interpolation along one row, past both ends: border repeated, then 0."""
    width = len(values)
    xs = np.linspace(-2.0, width + 1.0, 1200)
    out = []
    for v in xs:
        inside, lo, hi, w_lo, w_hi = geometry.bilinear_1d(F, F(v), width)
        out.append(w_lo * values[lo] + w_hi * values[hi] if inside else 0.0)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.axvspan(-1, 0, color="#fff2cc", label="within one pixel: border repeated")
    ax.axvspan(width - 1, width, color="#fff2cc")
    ax.axvspan(-2, -1, color="#f4cccc", label="beyond: 0")
    ax.axvspan(width, width + 1, color="#f4cccc")
    ax.plot(xs, out, color="k", lw=1.5, label="interpolated value")
    ax.stem(np.arange(width), values, basefmt=" ", linefmt="C0-", markerfmt="C0o", label="pixels")
    ax.set_xlabel("sampling coordinate x (pixel w's value sits at x = w)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4)
    return _done(fig)


def sampling_grid(
    box, spatial_scale: float, output_size, sampling_ratio: int, feature_shape
) -> Figure:
    """RoIAlign's bins and sampling points, ``aligned=False`` next to ``aligned=True``."""
    fh, fw = feature_shape
    ph_n, pw_n = _pair(output_size)
    x1, y1, x2, y2 = (F(v) for v in box)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, aligned in zip(axes, (False, True), strict=True):
        _grid(ax, fh, fw, centres=True)
        s = spatial_scale
        _rect(ax, x1 * s, y1 * s, x2 * s, y2 * s, ec="k", lw=2)
        sy, sx, bin_h, bin_w, gh, gw, _ = geometry.align_box(
            F, x1, y1, x2, y2, F(s), aligned, ph_n, pw_n, sampling_ratio
        )
        for p in range(ph_n + 1):
            ax.plot(
                [sx + 0.5, sx + 0.5 + pw_n * bin_w],
                [sy + 0.5 + p * bin_h] * 2,
                color="#0b5394",
                lw=0.8,
            )
        for p in range(pw_n + 1):
            ax.plot(
                [sx + 0.5 + p * bin_w] * 2,
                [sy + 0.5, sy + 0.5 + ph_n * bin_h],
                color="#0b5394",
                lw=0.8,
            )
        ys = [
            geometry.sample_coord(F, sy, bin_h, p, i, gh) + 0.5
            for p in range(ph_n)
            for i in range(gh)
        ]
        xs = [
            geometry.sample_coord(F, sx, bin_w, p, i, gw) + 0.5
            for p in range(pw_n)
            for i in range(gw)
        ]
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        ax.plot(xx.ravel(), yy.ravel(), "o", color="#cc0000", ms=4)
        mode = "adaptive" if sampling_ratio <= 0 else f"sampling_ratio={sampling_ratio}"
        ax.set_title(f"aligned={aligned}: {gh}x{gw} samples per bin ({mode})")
    axes[0].text(
        0, fh + 0.4, "black: the box; blue: bins; red: samples; grey: pixel centres", fontsize=8
    )
    return _done(fig)


# --- lesson 5: RoIAlign backward -----------------------------------------------------------------


def gradient_footprints(maps: dict[str, np.ndarray], box, spatial_scale: float = 1.0) -> Figure:
    """Heat maps of d output / d input for one output bin, one panel per operator."""
    fig, axes = plt.subplots(1, len(maps), figsize=(3.6 * len(maps), 3.8))
    axes = np.atleast_1d(axes)
    x1, y1, x2, y2 = (v * spatial_scale for v in box)
    for ax, (name, grad) in zip(axes, maps.items(), strict=True):
        height, width = grad.shape
        vmax = np.abs(grad).max() or 1.0
        ax.imshow(grad, cmap="RdBu_r", vmin=-vmax, vmax=vmax, extent=(0, width, height, 0))
        _rect(ax, x1, y1, x2, y2, ec="k", lw=1.5, ls="--")
        ax.set_title(f"{name}\n{np.count_nonzero(grad)} pixels, sum {grad.sum():.3g}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    return _done(fig)
