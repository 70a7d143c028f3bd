"""Grading tests for exercise 09: anchors (torchvision's ``AnchorGenerator``).

The oracle is :mod:`refimpl.model.anchors`.
"""

from __future__ import annotations

import numpy as np
import torch

from refimpl.course.checks import check_array, fail, points
from refimpl.model import anchors as ref


def tensor_case(got, expected, what, dtype=torch.float32):
    if not isinstance(got, torch.Tensor):
        fail(f"{what} returned a {type(got).__name__}, not a torch.Tensor")
    if got.dtype != dtype:
        fail(f"{what}: expected dtype {dtype}, got {got.dtype}")
    check_array(got.numpy(), expected.numpy(), what, check_dtype=False)


@points(2)
def test_base_anchors_known(sub):
    """base_anchors: size 32, ratios 0.5, 1, 2 (known answer)"""
    got = sub.base_anchors((32,), (0.5, 1.0, 2.0))
    expected = torch.tensor([[-23.0, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])
    tensor_case(got, expected, "base_anchors((32,), (0.5, 1.0, 2.0))")


@points(2)
def test_base_anchors_order(sub):
    """base_anchors: several sizes and ratios, ratio-major"""
    for sizes, ratios in [
        ((32, 64, 128), (0.5, 1.0, 2.0)),
        ((8, 16), (1.0, 3.0)),
        ((100,), (0.25, 0.7, 1.3, 4.0)),
    ]:
        tensor_case(
            sub.base_anchors(sizes, ratios),
            ref.base_anchors(sizes, ratios),
            f"base_anchors({sizes}, {ratios})",
        )


@points(1)
def test_base_anchors_rounding(sub):
    """base_anchors: rounded half to even in float32 (sizes with .5 corners)"""
    rng = np.random.default_rng(90)
    sizes = tuple(float(v) for v in rng.integers(3, 60, 6) + 0.5)
    ratios = tuple(float(v) for v in rng.uniform(0.3, 3.0, 3))
    for s, r in [((5.0, 13.0, 21.0, 1.0), (1.0,)), (sizes, ratios)]:
        tensor_case(sub.base_anchors(s, r), ref.base_anchors(s, r), f"base_anchors({s}, {r})")


@points(2)
def test_grid_anchors_known(sub):
    """grid_anchors: a 2x3 map at stride 16, one anchor (known answer)"""
    base = torch.tensor([[-16.0, -16, 16, 16]])
    got = sub.grid_anchors(base, (2, 3), (16, 16))
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
    tensor_case(got, expected, "grid_anchors(one anchor, (2, 3), (16, 16))")


@points(3)
def test_grid_anchors_order(sub):
    """grid_anchors: (y, x, anchor) order, unequal strides, non-square grids"""
    for sizes, ratios, grid, stride in [
        ((32,), (0.5, 1.0, 2.0), (3, 5), (8, 8)),
        ((16, 24), (1.0, 2.0), (4, 2), (16, 12)),
        ((64,), (0.5, 1.0, 2.0), (1, 1), (32, 32)),
    ]:
        base = ref.base_anchors(sizes, ratios)
        tensor_case(
            sub.grid_anchors(base.clone(), grid, stride),
            ref.grid_anchors(base, grid, stride),
            f"grid_anchors({grid}, {stride})",
        )


@points(1)
def test_grid_anchors_dtype(sub):
    """grid_anchors: float64 base in, float64 anchors out"""
    base = ref.base_anchors((32,), (0.5, 1.0, 2.0)).double()
    tensor_case(
        sub.grid_anchors(base.clone(), (2, 2), (4, 4)),
        ref.grid_anchors(base, (2, 2), (4, 4)),
        "grid_anchors(float64 base)",
        dtype=torch.float64,
    )


@points(3)
def test_anchors_for_image(sub):
    """anchors_for_image: five FPN levels of a 128x96 image, against AnchorGenerator"""
    sizes = ((8,), (16,), (32,), (64,), (128,))
    ratios = ((0.5, 1.0, 2.0),) * 5
    feature_sizes = [(32, 24), (16, 12), (8, 6), (4, 3), (2, 2)]
    gen = ref.AnchorGenerator(sizes, ratios)
    fmaps = [torch.zeros(1, 1, h, w) for h, w in feature_sizes]
    tensor_case(
        sub.anchors_for_image((128, 96), feature_sizes, sizes, ratios),
        gen((128, 96), fmaps),
        "anchors_for_image(five levels)",
    )


@points(1)
def test_anchors_for_image_per_level_sizes(sub):
    """anchors_for_image: levels with different numbers of sizes and ratios"""
    sizes = ((8, 12), (24,))
    ratios = ((1.0,), (0.5, 2.0))
    gen = ref.AnchorGenerator(sizes, ratios)
    fmaps = [torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 8, 8)]
    tensor_case(
        sub.anchors_for_image((64, 64), [(16, 16), (8, 8)], sizes, ratios),
        gen((64, 64), fmaps),
        "anchors_for_image(two levels)",
    )
