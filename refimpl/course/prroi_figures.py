"""The pictures of lesson 5b, Precise RoI Pooling (IoU-Net, Jiang et al., ECCV 2018, sec. 3.3).

As :mod:`refimpl.course.figures`: every function that draws returns a closed ``matplotlib``
figure, and the computations come from refimpl (the python backend, the definition, or the
numpy backend where many evaluations are needed).

Coordinates: ``aligned=True`` throughout, so that pixel ``i`` covers ``[i, i + 1)`` of the
drawing, its value sits at its centre ``i + 0.5``, and a box edge ``x1`` is drawn at ``x1``
(``spatial_scale = 1``). In the 1-D pictures the axis is the sampling coordinate instead:
pixel ``i``'s value sits at ``t = i``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patches
from matplotlib.figure import Figure

from refimpl.ops import BACKENDS, geometry

F = np.float64
OPERATOR_COLORS = {"RoIPool": "#e69138", "RoIAlign": "#3d85c6", "PrRoIPool": "#cc0000"}


def _done(fig: Figure) -> Figure:
    fig.tight_layout()
    plt.close(fig)
    return fig


def _rect(ax, x0, y0, x1, y1, **kw) -> None:
    kw.setdefault("fill", False)
    ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, **kw))


def _pair(output_size) -> tuple[int, int]:
    if isinstance(output_size, (tuple, list)):
        return int(output_size[0]), int(output_size[1])
    return int(output_size), int(output_size)


def smooth_map(shape, seed: int = 0, blur: int = 2) -> np.ndarray:
    """A random feature map with some spatial correlation (normal noise blurred by a box filter
    ``2 * blur + 1`` wide, plus a gentle ramp), float64, zero mean and unit spread."""
    rng = np.random.default_rng(seed)
    height, width = shape
    noise = rng.normal(size=(height + 2 * blur, width + 2 * blur))
    kernel = np.ones(2 * blur + 1) / (2 * blur + 1)
    rows = np.apply_along_axis(np.convolve, 1, noise, kernel, mode="valid")
    smooth = np.apply_along_axis(np.convolve, 0, rows, kernel, mode="valid")
    smooth += np.linspace(-0.5, 0.5, width)[None, :] * smooth.std() * 2
    return (smooth - smooth.mean()) / smooth.std()


# --- the tent view of bilinear interpolation ---------------------------------------------------


def tent_interpolation(values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The 1-D map PrRoIPool integrates: ``f(t) = sum_i values[i] * tent(t - i)``, which is
    linear interpolation between the pixels and falls to 0 one pixel beyond either end."""
    values = np.asarray(values, dtype=F)
    tents = np.maximum(1.0 - np.abs(t[:, None] - np.arange(len(values))[None, :]), 0.0)
    return tents @ values


def tent_view(values, interval: tuple[float, float]) -> Figure:
    """Left: a row of pixels as a sum of tents, and its integral over ``interval``, closed form
    next to a fine numerical quadrature. Right: one tent, its antiderivative ``T`` and the
    integral ``T(b - i) - T(a - i)`` as a difference of two values of ``T``."""
    values = np.asarray(values, dtype=F)
    width = len(values)
    a, b = (F(v) for v in interval)
    t = np.linspace(-2.0, width + 1.0, 2001)
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.9), gridspec_kw=dict(width_ratios=[1.6, 1]))
    ax = axes[0]
    for i, v in enumerate(values):
        ax.plot(t, v * np.maximum(1 - np.abs(t - i), 0), lw=0.9, color=f"C{i % 10}", alpha=0.8)
    f = tent_interpolation(values, t)
    ax.plot(t, f, color="k", lw=2, label="f(t) = sum of the tents")
    ax.stem(np.arange(width), values, basefmt=" ", linefmt="C7:", markerfmt="ko", label="pixels")
    inside = (t >= a) & (t <= b)
    ax.fill_between(t[inside], f[inside], color="#f4cccc", label=f"integral over [{a:g}, {b:g}]")
    closed = sum(v * geometry.tent_integral(F, a, b, i) for i, v in enumerate(values))
    s = np.linspace(a, b, 200_001)
    numeric = np.mean(tent_interpolation(values, s)) * (b - a)
    ax.set_title(f"closed form {closed:.9f}   numerical quadrature {numeric:.9f}", fontsize=10)
    ax.axhline(0, color="0.6", lw=0.6)
    ax.set_xlabel("t (pixel i's value sits at t = i)")
    ax.legend(fontsize=8, loc="upper left", ncol=2)

    ax = axes[1]
    u = np.linspace(-2, 2, 801)
    ax.plot(u, np.maximum(1 - np.abs(u), 0), color="k", lw=1.5, label="tent(u) = max(0, 1 - |u|)")
    big_t = np.array([geometry.tent_antiderivative(F, v) for v in u])
    ax.plot(u, big_t, color="#cc0000", lw=2, label="T(u), its integral from -inf")
    lo, hi = -0.6, 0.4  # the interval [a, b] shifted by the pixel: a - i, b - i
    ax.fill_between(u[(u >= lo) & (u <= hi)], np.maximum(1 - np.abs(u[(u >= lo) & (u <= hi)]), 0),
                    color="#f4cccc")  # fmt: skip
    for v in (lo, hi):
        ax.plot([v, v], [0, geometry.tent_antiderivative(F, v)], ":", color="#cc0000")
        ax.plot(v, geometry.tent_antiderivative(F, v), "o", color="#cc0000", ms=5)
    ax.set_title(
        f"pink area = T({hi:g}) - T({lo:g}) = {geometry.tent_integral(F, lo, hi, 0):.4f}",
        fontsize=10,
    )
    ax.set_xlabel("u = t - i")
    ax.legend(fontsize=8, loc="upper left")
    return _done(fig)


# --- three poolings of one box -------------------------------------------------------------------


def _bin_edges(box, output_size):
    ph_n, pw_n = _pair(output_size)
    x1, y1, x2, y2 = box
    ys = [y1 + (y2 - y1) * p / ph_n for p in range(ph_n + 1)]
    xs = [x1 + (x2 - x1) * p / pw_n for p in range(pw_n + 1)]
    return ys, xs


def pool_three_ways(plane: np.ndarray, box, output_size, sampling_ratio: int = 2) -> dict:
    """RoIPool, RoIAlign (``aligned=True``, ``sampling_ratio``) and PrRoIPool (``aligned=True``)
    of one box on one map, ``spatial_scale = 1``: name -> ``[PH, PW]`` (the python backend)."""
    ref = BACKENDS["python"]
    x = np.ascontiguousarray(plane, dtype=F)[None, None]
    rois = np.array([[0.0, *box]])
    return {
        "RoIPool": ref.roi_pool_forward(x, rois, output_size)[0, 0],
        "RoIAlign": ref.roi_align_forward(x, rois, output_size, 1.0, sampling_ratio, True)[0, 0],
        "PrRoIPool": ref.prroi_pool_forward(x, rois, output_size, 1.0, True)[0, 0],
    }


def three_poolings(plane: np.ndarray, box, output_size, sampling_ratio: int = 2) -> Figure:
    """The map with the box and its bins, RoIAlign's sampling points and RoIPool's integer
    bins; then the three outputs on one colour scale, values written in."""
    outputs = pool_three_ways(plane, box, output_size, sampling_ratio)
    height, width = plane.shape
    ph_n, pw_n = _pair(output_size)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2), gridspec_kw=dict(width_ratios=[1.5, 1, 1, 1]))
    vmin = min(plane.min(), *(o.min() for o in outputs.values()))
    vmax = max(plane.max(), *(o.max() for o in outputs.values()))
    ax = axes[0]
    ax.imshow(plane, cmap="viridis", vmin=vmin, vmax=vmax, extent=(0, width, height, 0))
    ys, xs = _bin_edges(box, output_size)
    for y in ys:
        ax.plot([xs[0], xs[-1]], [y, y], color="w", lw=1.2)
    for x in xs:
        ax.plot([x, x], [ys[0], ys[-1]], color="w", lw=1.2)
    # RoIAlign's samples (drawn at sampling coordinate + 0.5: aligned=True puts them in the bins)
    sy, sx, bin_h, bin_w, gh, gw, _ = geometry.align_box(
        F, *(F(v) for v in box), F(1.0), True, ph_n, pw_n, sampling_ratio
    )
    py = [
        geometry.sample_coord(F, sy, bin_h, p, i, gh) + 0.5 for p in range(ph_n) for i in range(gh)
    ]
    px = [
        geometry.sample_coord(F, sx, bin_w, p, i, gw) + 0.5 for p in range(pw_n) for i in range(gw)
    ]
    yy, xx = np.meshgrid(py, px, indexing="ij")
    ax.plot(
        xx.ravel(), yy.ravel(), "o", color=OPERATOR_COLORS["RoIAlign"], ms=3.5, mec="w", mew=0.5
    )
    # RoIPool's cells: the box rounded to cells, end inclusive
    x1, y1, x2, y2 = (geometry.c_round(v) for v in box)
    _rect(ax, x1, y1, x2 + 1, y2 + 1, ec=OPERATOR_COLORS["RoIPool"], lw=2, ls="--")
    ax.set_title(
        "white: the box's bins; orange: RoIPool's rounded box;\n"
        f"blue: RoIAlign's {gh}x{gw} samples per bin",
        fontsize=9,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    for ax, (name, out) in zip(axes[1:], outputs.items(), strict=True):
        ax.imshow(out, cmap="viridis", vmin=vmin, vmax=vmax)
        for i in range(ph_n):
            for j in range(pw_n):
                ax.text(j, i, f"{out[i, j]:.2f}", ha="center", va="center", color="w", fontsize=9)
        ax.set_title(name, color=OPERATOR_COLORS[name])
        ax.set_xticks([])
        ax.set_yticks([])
    return _done(fig)


# --- RoIAlign converges to PrRoIPool -------------------------------------------------------------


def align_errors(x: np.ndarray, rois: np.ndarray, output_size, ratios, aligned: bool = True):
    """``max |RoIAlign(sampling_ratio=n) - PrRoIPool|`` for each ``n`` in ``ratios`` (the numpy
    backend, ``spatial_scale = 1``): RoIAlign's average of ``n x n`` samples is the midpoint
    rule for PrRoIPool's integral."""
    nb = BACKENDS["numpy"]
    exact = nb.prroi_pool_forward(x, rois, output_size, 1.0, aligned)
    return np.array(
        [
            np.abs(nb.roi_align_forward(x, rois, output_size, 1.0, int(n), aligned) - exact).max()
            for n in ratios
        ]
    )


def convergence(ratios, errors: dict[str, np.ndarray]) -> Figure:
    """The errors of :func:`align_errors` on log-log axes, with a slope -2 guide."""
    ratios = np.asarray(ratios, dtype=F)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for (label, err), marker in zip(errors.items(), "os^v", strict=False):
        ax.loglog(ratios, np.maximum(err, 1e-17), marker + "-", lw=1.5, label=label)
    first = next(iter(errors.values()))
    guide = first[0] * (ratios / ratios[0]) ** -2.0
    ax.loglog(ratios, guide, "k:", lw=1, label="slope -2: error ~ 1 / n²")
    ax.set_xlabel("sampling_ratio n (n x n samples per bin)")
    ax.set_ylabel("max |RoIAlign - PrRoIPool|")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _done(fig)


# --- the box gradient ----------------------------------------------------------------------------


def box_responses(plane: np.ndarray, box, shifts, output_size=1) -> dict:
    """Bin (0, 0) of each operator as the box's left edge ``x1`` moves by ``shifts`` (numpy
    backend, ``aligned=True``), and PrRoIPool's ``d output / d x1`` from its backward."""
    nb = BACKENDS["numpy"]
    x = np.ascontiguousarray(plane, dtype=F)[None, None]
    ph_n, pw_n = _pair(output_size)
    one_hot = np.zeros((1, 1, ph_n, pw_n))
    one_hot[0, 0, 0, 0] = 1.0
    curves: dict[str, list] = {
        "RoIPool": [],
        "RoIAlign (adaptive)": [],
        "RoIAlign (2x2)": [],
        "PrRoIPool": [],
    }
    slope = []
    for s in shifts:
        rois = np.array([[0.0, box[0] + s, box[1], box[2], box[3]]])
        curves["RoIPool"].append(nb.roi_pool_forward(x, rois, output_size)[0, 0, 0, 0])
        curves["RoIAlign (adaptive)"].append(
            nb.roi_align_forward(x, rois, output_size, 1.0, -1, True)[0, 0, 0, 0]
        )
        curves["RoIAlign (2x2)"].append(
            nb.roi_align_forward(x, rois, output_size, 1.0, 2, True)[0, 0, 0, 0]
        )
        curves["PrRoIPool"].append(
            nb.prroi_pool_forward(x, rois, output_size, 1.0, True)[0, 0, 0, 0]
        )
        _, grad_rois = nb.prroi_pool_backward(x, rois, one_hot, output_size, 1.0, True)
        slope.append(grad_rois[0, 1])
    out = {name: np.array(v) for name, v in curves.items()}
    out["d PrRoIPool / d x1"] = np.array(slope)
    return out


def box_response(shifts, responses: dict) -> Figure:
    """Left: how the outputs of :func:`box_responses` change with the shift (relative to the
    middle shift). Right: PrRoIPool's box gradient from its backward, and central
    differences of its forward."""
    shifts = np.asarray(shifts, dtype=F)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    ax = axes[0]
    styles = {"RoIPool": "-", "RoIAlign (adaptive)": "-", "RoIAlign (2x2)": "--", "PrRoIPool": "-"}
    colors = {
        "RoIPool": OPERATOR_COLORS["RoIPool"],
        "RoIAlign (adaptive)": OPERATOR_COLORS["RoIAlign"],
        "RoIAlign (2x2)": "#6fa8dc",
        "PrRoIPool": OPERATOR_COLORS["PrRoIPool"],
    }
    middle = len(shifts) // 2
    for name, style in styles.items():
        change = responses[name] - responses[name][middle]
        ax.plot(shifts, change, style, color=colors[name], lw=1.8, label=name)
    ax.set_xlabel("shift of the box's left edge x1 (pixels)")
    ax.set_ylabel(f"output - output at shift {shifts[middle]:g}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    ax.plot(shifts, responses["d PrRoIPool / d x1"], color=OPERATOR_COLORS["PrRoIPool"], lw=2,
            label="backward: grad_rois[:, 1]")  # fmt: skip
    values, step = responses["PrRoIPool"], shifts[1] - shifts[0]
    central = (values[2:] - values[:-2]) / (2 * step)
    every = max(1, len(central) // 40)
    ax.plot(shifts[1:-1][::every], central[::every], "k.", ms=5, label="central differences")
    ax.axhline(0, color="0.6", lw=0.6)
    ax.set_xlabel("shift of the box's left edge x1 (pixels)")
    ax.set_ylabel("d output / d x1")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _done(fig)


def soft_rectangle(shape, box, softness: float = 1.0) -> np.ndarray:
    """A map that is about 1 inside ``box = (x1, y1, x2, y2)`` and 0 outside, with logistic
    edges ``softness`` pixels wide, sampled at the pixel centres (``aligned=True``)."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    x1, y1, x2, y2 = box

    def step(v, lo, hi):
        return 1 / (1 + np.exp(-(v - lo) / softness)) / (1 + np.exp((v - hi) / softness))

    return step(xx, x1, x2) * step(yy, y1, y2)


def box_refinement(feature: np.ndarray, boxes, scores, target=None) -> Figure:
    """Left: the feature map and the box at every step (light to dark), the start dashed,
    the end solid, ``target`` dotted. Right: the score and, with a target, the IoU per step."""
    boxes = np.asarray(boxes, dtype=F)
    height, width = feature.shape
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.3), gridspec_kw=dict(width_ratios=[1.2, 1]))
    ax = axes[0]
    vmax = np.abs(feature).max()
    ax.imshow(feature, cmap="RdBu_r", vmin=-vmax, vmax=vmax, extent=(0, width, height, 0))
    cmap = plt.get_cmap("Greys")
    n = len(boxes)
    for k, b in enumerate(boxes):
        _rect(ax, *b, ec=cmap(0.3 + 0.6 * k / max(n - 1, 1)), lw=0.8)
    _rect(ax, *boxes[0], ec="k", lw=2, ls="--")
    _rect(ax, *boxes[-1], ec="k", lw=2.5)
    if target is not None:
        _rect(ax, *target, ec="#38761d", lw=2, ls=":")
    ax.set_title("dashed: start; solid: after gradient ascent; green: the object", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax = axes[1]
    steps = np.arange(n)
    ax.plot(steps, scores, color="k", lw=2, label="score")
    ax.set_xlabel("step")
    ax.set_ylabel("score")
    if target is not None:
        iou = BACKENDS["python"].box_iou(boxes, np.asarray([target], dtype=F))[:, 0]
        twin = ax.twinx()
        twin.plot(steps, iou, color="#38761d", lw=2, label="IoU with the object")
        twin.set_ylabel("IoU with the object", color="#38761d")
        twin.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _done(fig)
