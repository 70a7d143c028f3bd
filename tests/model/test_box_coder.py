"""Box coding (Faster R-CNN eq. 2): known values, the round trip, and the decoding clamp."""

from __future__ import annotations

import math

import torch

from refimpl.model.box_coder import BBOX_XFORM_CLIP, BoxCoder


def test_encode_known_values():
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64)
    gt = torch.tensor([[1.0, 2.0, 11.0, 14.0]], dtype=torch.float64)
    # centres (5, 5) -> (6, 8); sizes 10x10 -> 10x12
    d = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(gt, ref)
    torch.testing.assert_close(d, torch.tensor([[1.0, 3.0, 0.0, 5 * math.log(1.2)]]).double())
    d1 = BoxCoder((1.0, 1.0, 1.0, 1.0)).encode(gt, ref)
    torch.testing.assert_close(d1, torch.tensor([[0.1, 0.3, 0.0, math.log(1.2)]]).double())


def test_decode_known_values_and_shape():
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0]], dtype=torch.float64)
    # two sets of deltas (e.g. two classes): identity, then shift + double the width
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.5, -0.25, math.log(2.0), 0.0]]).double()
    boxes = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(deltas, ref)
    assert boxes.shape == (1, 2, 4)
    # centre (5, 10) -> (5 + 0.5 * 10, 10 - 0.25 * 20) = (10, 5); size 20 x 20
    torch.testing.assert_close(boxes[0], torch.tensor([[0.0, 0, 10, 20], [0, -5, 20, 15]]).double())


def test_round_trip():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g, dtype=torch.float64) * 100
    ref = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g, dtype=torch.float64) * 50], 1)
    xy = torch.rand(50, 2, generator=g, dtype=torch.float64) * 100
    gt = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g, dtype=torch.float64) * 50], 1)
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        coder = BoxCoder(weights)
        back = coder.decode(coder.encode(gt, ref), ref)[:, 0]
        torch.testing.assert_close(back, gt, rtol=1e-12, atol=1e-10)


def test_decode_clamps_log_scale():
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    boxes = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(torch.tensor([[0.0, 0.0, 100.0, 1e6]]), ref)
    # exp(log(1000 / 16)) * 16 = 1000: finite, however wild the prediction
    torch.testing.assert_close(boxes[0, 0], torch.tensor([-492.0, -492.0, 508.0, 508.0]))
    assert math.isclose(BBOX_XFORM_CLIP, math.log(1000 / 16))
    # weights divide before the clamp: dw = 5 * log(1000 / 16) is exactly at it
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    w = coder.decode(torch.tensor([[0.0, 0.0, 5 * BBOX_XFORM_CLIP + 5.0, 0.0]]), ref)[0, 0]
    torch.testing.assert_close(w[2] - w[0], torch.tensor(1000.0))
