"""Grading tests for exercise 09: anchors (torchvision's ``AnchorGenerator``).

The oracle is :mod:`refimpl.model.anchors`.
"""

from __future__ import annotations

import textwrap

import numpy as np
import torch

from refimpl.course.checks import check_array, describe, fail, points
from refimpl.model import anchors as ref


def tensor_case(got, expected, what, dtype=torch.float32, inputs="", hints=()):
    suffix = "\n" + textwrap.indent(inputs, "  ") if inputs else ""
    if not isinstance(got, torch.Tensor):
        fail(f"{what} returned a {type(got).__name__}, not a torch.Tensor{suffix}")
    if got.dtype != dtype:
        fail(f"{what}: expected dtype {dtype}, got {got.dtype}{suffix}")
    check_array(got.numpy(), expected.numpy(), what, check_dtype=False, inputs=inputs, hints=hints)


def variant_base(sizes, ratios, *, dtype=torch.float32, rounding="even", size_major=False):
    """Base anchors as a typical bug computes them."""
    scales = torch.as_tensor(sizes, dtype=dtype)
    h_ratios = torch.sqrt(torch.as_tensor(ratios, dtype=dtype))
    w_ratios = 1 / h_ratios
    ws, hs = w_ratios[:, None] * scales[None, :], h_ratios[:, None] * scales[None, :]
    if size_major:
        ws, hs = ws.T, hs.T
    out = torch.stack([-ws.reshape(-1), -hs.reshape(-1), ws.reshape(-1), hs.reshape(-1)], 1) / 2
    rounded = {
        "even": torch.round,
        "none": lambda v: v,
        "trunc": torch.trunc,
        "away": lambda v: torch.sign(v) * torch.floor(v.abs() + 0.5),
    }[rounding](out)
    return rounded.float()


def base_hints(sizes, ratios):
    return [
        ("base anchors not rounded (torchvision rounds them: .round())", lambda: variant_base(
            sizes, ratios, rounding="none")),
        ("int() / trunc() where base anchors are rounded half to even (torch.round)",
         lambda: variant_base(sizes, ratios, rounding="trunc")),
        ("halves rounded away from zero where torch.round rounds them to even",
         lambda: variant_base(sizes, ratios, rounding="away")),
        ("computed in float64: torchvision computes base anchors in float32, then rounds",
         lambda: variant_base(sizes, ratios, dtype=torch.float64)),
        ("size-major order: the anchors are ratio-major (all sizes of the first ratio first)",
         lambda: variant_base(sizes, ratios, size_major=True)),
    ]  # fmt: skip


def variant_grid(base, grid_size, stride, *, order="yxa", swap_strides=False, offset=False):
    """A level's anchors as a typical bug computes them."""
    (h, w), (sy, sx) = grid_size, stride
    if swap_strides:
        sy, sx = sx, sy
    ys = torch.arange(h, dtype=base.dtype) * sy + (sy / 2 if offset else 0)
    xs = torch.arange(w, dtype=base.dtype) * sx + (sx / 2 if offset else 0)
    sy_, sx_ = torch.meshgrid(ys, xs, indexing="ij")  # [H, W]
    shifts = torch.stack([sx_, sy_, sx_, sy_], -1)  # [H, W, 4]
    out = shifts[:, :, None, :] + base[None, None]  # [H, W, A, 4]
    perm = {"yxa": (0, 1, 2), "xya": (1, 0, 2), "ayx": (2, 0, 1)}[order]
    return out.permute(*perm, 3).reshape(-1, 4)


def grid_hints(base, grid_size, stride):
    return [
        ("anchors in (x, y, anchor) order: the order is (y, x, anchor), x varying fastest "
         "after the anchors (meshgrid(ys, xs, indexing='ij'))",
         lambda: variant_grid(base, grid_size, stride, order="xya")),
        ("anchors in (anchor, y, x) order: the order is (y, x, anchor), the A anchors of a "
         "cell next to each other", lambda: variant_grid(base, grid_size, stride, order="ayx")),
        ("stride_y and stride_x swapped: stride is (stride_y, stride_x)",
         lambda: variant_grid(base, grid_size, stride, swap_strides=True)),
        ("a half-stride offset: anchors are centred at (x * stride_x, y * stride_y), not at "
         "cell centres", lambda: variant_grid(base, grid_size, stride, offset=True)),
    ]  # fmt: skip


def image_hints(image_size, feature_sizes, sizes, ratios):
    def levels(rounding="even", **kwargs):
        out = []
        for (h, w), s, a in zip(feature_sizes, sizes, ratios, strict=True):
            stride = (image_size[0] // h, image_size[1] // w)
            base = variant_base(s, a, rounding=rounding)
            out.append(variant_grid(base, (h, w), stride, **kwargs))
        return torch.cat(out)

    return [
        ("anchors in (x, y, anchor) order: the order is (y, x, anchor)",
         lambda: levels(order="xya")),
        ("anchors in (anchor, y, x) order: the order is (y, x, anchor)",
         lambda: levels(order="ayx")),
        ("stride_y and stride_x swapped: stride = (image_h // feature_h, image_w // feature_w)",
         lambda: levels(swap_strides=True)),
        ("base anchors not rounded (torchvision rounds them: .round())",
         lambda: levels(rounding="none")),
    ]  # fmt: skip


def base_case(sub, sizes, ratios, expected=None):
    expected = ref.base_anchors(sizes, ratios) if expected is None else expected
    tensor_case(
        sub.base_anchors(sizes, ratios),
        expected,
        f"base_anchors({sizes}, {ratios})",
        inputs=describe("base_anchors", sizes=sizes, aspect_ratios=ratios),
        hints=base_hints(sizes, ratios),
    )


def grid_case(sub, base, grid_size, stride, expected=None, dtype=torch.float32):
    expected = ref.grid_anchors(base, grid_size, stride) if expected is None else expected
    tensor_case(
        sub.grid_anchors(base.clone(), grid_size, stride),
        expected,
        f"grid_anchors(base, {grid_size}, {stride})",
        dtype=dtype,
        inputs=describe("grid_anchors", base=base, grid_size=grid_size, stride=stride),
        hints=grid_hints(base, grid_size, stride),
    )


def image_case(sub, image_size, feature_sizes, sizes, ratios, what):
    gen = ref.AnchorGenerator(sizes, ratios)
    fmaps = [torch.zeros(1, 1, h, w) for h, w in feature_sizes]
    tensor_case(
        sub.anchors_for_image(image_size, feature_sizes, sizes, ratios),
        gen(image_size, fmaps),
        what,
        inputs=describe(
            "anchors_for_image",
            image_size=image_size,
            feature_sizes=feature_sizes,
            sizes=sizes,
            aspect_ratios=ratios,
        ),  # fmt: skip,
        hints=image_hints(image_size, feature_sizes, sizes, ratios),
    )


@points(2)
def test_base_anchors_known(sub):
    """base_anchors: size 32, ratios 0.5, 1, 2 (known answer)"""
    expected = torch.tensor([[-23.0, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])
    base_case(sub, (32,), (0.5, 1.0, 2.0), expected)


@points(2)
def test_base_anchors_order(sub):
    """base_anchors: several sizes and ratios, ratio-major"""
    for sizes, ratios in [
        ((32, 64, 128), (0.5, 1.0, 2.0)),
        ((8, 16), (1.0, 3.0)),
        ((100,), (0.25, 0.7, 1.3, 4.0)),
    ]:
        base_case(sub, sizes, ratios)


@points(1)
def test_base_anchors_rounding(sub):
    """base_anchors: rounded half to even in float32 (sizes with .5 corners)"""
    rng = np.random.default_rng(90)
    sizes = tuple(float(v) for v in rng.integers(3, 60, 6) + 0.5)
    ratios = tuple(float(v) for v in rng.uniform(0.3, 3.0, 3))
    for s, r in [((5.0, 13.0, 21.0, 1.0), (1.0,)), (sizes, ratios)]:
        base_case(sub, s, r)


@points(2)
def test_grid_anchors_known(sub):
    """grid_anchors: a 2x3 map at stride 16, one anchor (known answer)"""
    base = torch.tensor([[-16.0, -16, 16, 16]])
    expected = torch.tensor(
        [
            [-16.0, -16, 16, 16],
            [0, -16, 32, 16],
            [16, -16, 48, 16],
            [-16, 0, 16, 32],
            [0, 0, 32, 32],
            [16, 0, 48, 32],
        ]
    )
    grid_case(sub, base, (2, 3), (16, 16), expected)


@points(3)
def test_grid_anchors_order(sub):
    """grid_anchors: (y, x, anchor) order, unequal strides, non-square grids"""
    for sizes, ratios, grid, stride in [
        ((32,), (0.5, 1.0, 2.0), (3, 5), (8, 8)),
        ((16, 24), (1.0, 2.0), (4, 2), (16, 12)),
        ((64,), (0.5, 1.0, 2.0), (1, 1), (32, 32)),
    ]:
        grid_case(sub, ref.base_anchors(sizes, ratios), grid, stride)


@points(1)
def test_grid_anchors_dtype(sub):
    """grid_anchors: float64 base in, float64 anchors out"""
    base = ref.base_anchors((32,), (0.5, 1.0, 2.0)).double()
    grid_case(sub, base, (2, 2), (4, 4), dtype=torch.float64)


@points(3)
def test_anchors_for_image(sub):
    """anchors_for_image: five FPN levels of a 128x96 image, against AnchorGenerator"""
    sizes = ((8,), (16,), (32,), (64,), (128,))
    ratios = ((0.5, 1.0, 2.0),) * 5
    feature_sizes = [(32, 24), (16, 12), (8, 6), (4, 3), (2, 2)]
    image_case(sub, (128, 96), feature_sizes, sizes, ratios, "anchors_for_image(five levels)")


@points(1)
def test_anchors_for_image_per_level_sizes(sub):
    """anchors_for_image: levels with different numbers of sizes and ratios"""
    sizes = ((8, 12), (24,))
    ratios = ((1.0,), (0.5, 2.0))
    image_case(sub, (64, 64), [(16, 16), (8, 8)], sizes, ratios, "anchors_for_image(two levels)")
