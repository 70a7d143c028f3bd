"""FPN level assignment (FPN eq. 1) and the multi-level RoI pooler as the model builds it
(refimpl.ops.MultiScaleRoIAlign with the model's options)."""

from __future__ import annotations

import pytest
import torch

from refimpl.model.poolers import POOLED_LEVELS, LevelMapper, fpn_roi_pooler
from refimpl.ops import roi_align, roi_pool, roi_warp


def square(side: float, x0: float = 0.0) -> list[float]:
    return [x0, x0, x0 + side, x0 + side]


@pytest.mark.parametrize(
    ("side", "level"),
    [
        (224, 4),  # the canonical size -> k0
        (112, 3),  # exactly half: the 1e-6 keeps it at k0 - 1, not k0 - 2
        (111.9, 2),
        (448, 5),
        (447, 4),
        (10_000, 5),  # clamped to the coarsest level
        (1, 2),  # clamped to the finest
    ],
)
def test_level_mapper_eq1(side, level):
    boxes = torch.tensor([square(side)], dtype=torch.float64)
    assert LevelMapper(2, 5)([boxes]).item() == level - 2


def test_level_mapper_canonical_scale_is_a_parameter():
    boxes = torch.tensor([square(56), square(28), square(112)])
    assert (LevelMapper(2, 5, canonical_scale=56)([boxes]) + 2).tolist() == [4, 3, 5]
    assert (LevelMapper(2, 5)([boxes]) + 2).tolist() == [2, 2, 3]


def pyramid(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    # a 2-image batch padded to 64 x 96; P2..P5 plus a P6 the pooler must ignore
    return {
        f"p{k}": torch.randn(2, 3, 64 // 2**k, 96 // 2**k, generator=g, dtype=dtype)
        for k in range(2, 7)
    }


def test_each_roi_is_pooled_from_its_level():
    feats = pyramid()
    boxes = [
        torch.tensor([[1.3, 2.2, 20.7, 15.1], [3.0, 4.0, 60.5, 50.5]], dtype=torch.float64),
        torch.tensor([[0.5, 0.5, 90.0, 63.0]], dtype=torch.float64),
    ]
    pooler = fpn_roi_pooler(7, sampling_ratio=2, canonical_scale=56)
    out = pooler(feats, boxes, [(64, 96)])
    assert out.shape == (3, 3, 7, 7)
    levels = LevelMapper(2, 5, canonical_scale=56)(boxes)
    rois = [(0, boxes[0][0]), (0, boxes[0][1]), (1, boxes[1][0])]
    for k, (img, box) in enumerate(rois):
        lvl = int(levels[k])
        want = roi_align(
            feats[POOLED_LEVELS[lvl]],
            torch.cat([torch.tensor([img], dtype=box.dtype), box])[None],
            7,
            spatial_scale=1 / 2 ** (lvl + 2),
            sampling_ratio=2,
        )
        torch.testing.assert_close(out[k : k + 1], want, rtol=0, atol=0)
    assert sorted(set(levels.tolist())) == [0, 1, 2]  # the test spans P2, P3 and P4


@pytest.mark.parametrize(
    ("roi_op", "pool_mode"),
    [("align", "avg"), ("align", "max"), ("warp", "avg"), ("warp", "max"), ("pool", "max")],
)
def test_roi_op_dispatch(roi_op, pool_mode):
    feats = pyramid()
    box = torch.tensor([[4.3, 5.1, 30.2, 27.9]], dtype=torch.float64)  # P2 at scale 224
    out = fpn_roi_pooler(5, 2, roi_op=roi_op, pool_mode=pool_mode)(feats, [box], [(64, 96)])
    rois = torch.cat([torch.zeros(1, 1, dtype=box.dtype), box], 1)
    if roi_op == "align":
        want = roi_align(feats["p2"], rois, 5, 0.25, 2, False, pool_mode)
    elif roi_op == "warp":
        want = roi_warp(feats["p2"], rois, 5, 0.25, 2, pool_mode)
    else:
        want = roi_pool(feats["p2"], rois, 5, 0.25)
    torch.testing.assert_close(out, want, rtol=0, atol=0)


def test_empty_rois_and_invalid_options():
    empty = [torch.zeros(0, 4, dtype=torch.float64)] * 2
    assert fpn_roi_pooler(7)(pyramid(), empty, [(64, 96)]).shape == (0, 3, 7, 7)
    with pytest.raises(ValueError, match="roi_op"):
        fpn_roi_pooler(7, roi_op="crop")
    with pytest.raises(ValueError, match="pool_mode"):
        fpn_roi_pooler(7, pool_mode="median")
    with pytest.raises(ValueError, match="aligned"):
        fpn_roi_pooler(7, roi_op="pool", aligned=True)
