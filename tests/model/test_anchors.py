"""Anchors (Faster R-CNN sec. 3.1.1; spec: rounded base anchors, centres at x * stride, order
(y, x, anchor) per level) against hand-computed values."""

from __future__ import annotations

import math

import torch

from refimpl.model.anchors import AnchorGenerator, base_anchors, grid_anchors


def test_base_anchors_by_hand():
    # size 32, ratios h/w = 0.5, 1, 2: w = 32 / sqrt(ar), h = 32 sqrt(ar), halved and rounded
    # 0.5: w = 45.25, h = 22.63 -> [-22.63, -11.31, 22.63, 11.31] -> [-23, -11, 23, 11]
    expected = torch.tensor([[-23.0, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])
    torch.testing.assert_close(base_anchors([32], [0.5, 1.0, 2.0]), expected, rtol=0, atol=0)


def test_base_anchors_ratio_major_order_and_area():
    anchors = base_anchors([16, 64], [0.25, 1.0])
    # ratio-major: (0.25, 16), (0.25, 64), (1, 16), (1, 64)
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    torch.testing.assert_close(widths, torch.tensor([32.0, 128, 16, 64]))
    torch.testing.assert_close(heights, torch.tensor([8.0, 32, 16, 64]))
    for s, w, h in zip([16, 64, 16, 64], widths, heights, strict=True):
        assert math.isclose(float(w * h), s * s, rel_tol=0.1)


def test_grid_anchors_order_y_x_anchor():
    base = torch.tensor([[-2.0, -1, 2, 1], [-1, -2, 1, 2]])
    anchors = grid_anchors(base, grid_size=(2, 3), stride=(8, 4))
    assert anchors.shape == (2 * 3 * 2, 4)
    expected = []
    for y in range(2):
        for x in range(3):
            for b in base.tolist():
                cx, cy = x * 4, y * 8  # no half-pixel offset
                expected.append([cx + b[0], cy + b[1], cx + b[2], cy + b[3]])
    torch.testing.assert_close(anchors, torch.tensor(expected), rtol=0, atol=0)


def test_generator_levels_strides_and_dtype():
    gen = AnchorGenerator()  # the paper's: 32..512 on P2..P6, 3 ratios
    assert gen.num_anchors_per_location() == [3] * 5
    image_size = (64, 96)  # a padded batch
    feats = [torch.zeros(1, 1, 64 // s, 96 // s, dtype=torch.float64) for s in (4, 8, 16, 32)]
    feats.append(torch.zeros(1, 1, 1, 2, dtype=torch.float64))  # P6 of a 2x3 P5: stride 64 / 48
    anchors = gen(image_size, feats)
    counts = [f.shape[-2] * f.shape[-1] * 3 for f in feats]
    assert anchors.shape == (sum(counts), 4) and anchors.dtype == torch.float64
    levels = anchors.split(counts)
    torch.testing.assert_close(levels[0][:3], base_anchors([32], [0.5, 1, 2]).double())
    # P3 (stride 8): the anchor at (y=1, x=2) is the 3 * (1 * 12 + 2)-th
    torch.testing.assert_close(
        levels[1][3 * 14 + 1], torch.tensor([16 - 32.0, 8 - 32, 16 + 32, 8 + 32]).double()
    )
    # stride = image size // feature size, per axis: P6 has (64 // 1, 96 // 2) = (64, 48)
    torch.testing.assert_close(levels[4][3 + 1, :2], torch.tensor([48.0 - 256, -256]).double())
