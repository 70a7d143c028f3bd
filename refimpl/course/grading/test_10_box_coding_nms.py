"""Grading tests for exercise 10: box coding (encode, decode) and NMS (plain and per class).

The oracles are :class:`refimpl.model.box_coder.BoxCoder` and ``BACKENDS["numpy"]``'s
``box_iou`` and ``nms``.
"""

from __future__ import annotations

import numpy as np
import torch

from refimpl.course.checks import as_array, check_array, describe, fail, points
from refimpl.model.box_coder import BoxCoder
from refimpl.ops.numpy import box_iou as ref_iou
from refimpl.ops.numpy import nms as ref_nms


def random_boxes(rng, n, size=100.0, min_wh=2.0, max_wh=40.0):
    xy = rng.uniform(-10, size, (n, 2))
    wh = rng.uniform(min_wh, max_wh, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def tensor_out(got, what):
    if not isinstance(got, torch.Tensor):
        fail(f"{what} returned a {type(got).__name__}, not a torch.Tensor")
    return got.detach().numpy()


def index_case(got, expected, what, inputs=""):
    got = as_array(got, what)
    if got.dtype.kind not in "iu":
        fail(f"{what}: expected integer indices, got dtype {got.dtype}")
    check_array(got.astype(np.int64), expected, what, inputs=inputs)


@points(2)
def test_encode_known(sub):
    """encode: a known answer with weights (1, 1, 1, 1) and (10, 10, 5, 5)"""
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0], [10.0, 10.0, 14.0, 12.0]], dtype=torch.float64)
    gt = torch.tensor([[5.0, 0.0, 15.0, 40.0], [10.0, 10.0, 14.0, 12.0]], dtype=torch.float64)
    got = tensor_out(sub.encode(gt, ref, (1.0, 1.0, 1.0, 1.0)), "encode")
    check_array(got, np.array([[0.5, 0.5, 0.0, np.log(2)], [0, 0, 0, 0]]), "encode(weights 1)")
    got = tensor_out(sub.encode(gt, ref, (10.0, 10.0, 5.0, 5.0)), "encode")
    check_array(got, np.array([[5, 5, 0, 5 * np.log(2)], [0, 0, 0, 0]]), "encode(10, 10, 5, 5)")


@points(2)
def test_encode_random(sub):
    """encode: random boxes, float32 and float64, against BoxCoder"""
    rng = np.random.default_rng(100)
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        ref = torch.from_numpy(random_boxes(rng, 50)).to(dtype)
        gt = torch.from_numpy(random_boxes(rng, 50)).to(dtype)
        for w in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
            got = tensor_out(sub.encode(gt, ref, w), "encode")
            check_array(
                got,
                BoxCoder(w).encode(gt, ref).numpy(),
                f"encode({dtype}, {w})",
                rtol=tol,
                atol=tol,
            )


@points(2)
def test_decode_random(sub):
    """decode: random deltas, one and three sets per box, against BoxCoder"""
    rng = np.random.default_rng(101)
    for k in (1, 3):
        ref = torch.from_numpy(random_boxes(rng, 40))
        deltas = torch.from_numpy(rng.normal(0, 0.5, (40, 4 * k)))
        for w in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
            got = tensor_out(sub.decode(deltas, ref, w), "decode")
            check_array(got, BoxCoder(w).decode(deltas, ref).numpy(), f"decode(K={k}, {w})")


@points(1)
def test_decode_inverts_encode(sub):
    """decode(encode(gt, ref), ref) == gt"""
    rng = np.random.default_rng(102)
    ref = torch.from_numpy(random_boxes(rng, 30))
    gt = torch.from_numpy(random_boxes(rng, 30))
    w = (10.0, 10.0, 5.0, 5.0)
    got = tensor_out(sub.decode(BoxCoder(w).encode(gt, ref), ref, w), "decode")
    check_array(got[:, 0], gt.numpy(), "decode(encode(gt, ref), ref)", rtol=1e-9, atol=1e-9)


@points(2)
def test_decode_clamps(sub):
    """decode: dw, dh clamped at log(1000 / 16); large negative ones are not clamped"""
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 3, dtype=torch.float64)
    deltas = torch.tensor(
        [[0.0, 0.0, 100.0, 5.0], [0.0, 0.0, -8.0, 50.0], [1.0, -1.0, 1e4, 0.0]], dtype=torch.float64
    )
    got = tensor_out(sub.decode(deltas, ref, (1.0, 1.0, 1.0, 1.0)), "decode")
    expected = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(deltas, ref).numpy()
    check_array(got, expected, "decode(huge dw, dh)", inputs=describe(deltas=deltas.numpy()))


@points(2)
def test_box_iou(sub):
    """box_iou: random boxes, touching and nested boxes"""
    rng = np.random.default_rng(103)
    a, b = random_boxes(rng, 12), random_boxes(rng, 9)
    check_array(sub.box_iou(a, b), ref_iou(a, b), "box_iou(random)")
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10.0]])
    b = np.array([[10, 0, 20, 10], [2, 2, 5, 5.0], [0, 0, 10, 10]])
    check_array(sub.box_iou(a, b), ref_iou(a, b), "box_iou(touching, nested, equal)")


@points(3)
def test_nms_random(sub):
    """nms: random clusters of boxes, thresholds 0.3, 0.5, 0.7"""
    rng = np.random.default_rng(104)
    centres = rng.uniform(0, 200, (6, 2))
    boxes = np.concatenate(
        [np.concatenate([c - 20, c + 20]) + rng.normal(0, 4, (15, 4)) for c in centres]
    )
    scores = rng.uniform(0, 1, len(boxes))
    for t in (0.3, 0.5, 0.7):
        index_case(
            sub.nms(boxes.copy(), scores.copy(), t),
            ref_nms(boxes, scores, t),
            f"nms(threshold {t})",
        )


@points(1)
def test_nms_ties_and_edges(sub):
    """nms: equal scores keep the lower index; strictly greater IoU suppresses; no boxes"""
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 5], [50, 50, 60, 60.0]])
    scores = np.array([0.5, 0.5, 0.9, 0.5])
    for t in (0.5, 0.49, 1.0, 0.0):  # IoU of boxes 0 and 2: exactly 0.5
        index_case(
            sub.nms(boxes.copy(), scores.copy(), t),
            ref_nms(boxes, scores, t),
            f"nms(threshold {t})",
            describe(boxes=boxes, scores=scores),
        )
    got = as_array(sub.nms(np.zeros((0, 4)), np.zeros(0), 0.5), "nms(no boxes)")
    if got.size != 0:
        fail(f"nms of no boxes: expected no indices, got {got}")


@points(3)
def test_batched_nms(sub):
    """batched_nms: boxes of different classes never suppress each other"""
    rng = np.random.default_rng(105)
    centres = rng.uniform(0, 100, (4, 2))
    boxes = np.concatenate(
        [np.concatenate([c - 15, c + 15]) + rng.normal(0, 3, (12, 4)) for c in centres]
    )
    boxes -= 20  # some negative coordinates
    scores = rng.uniform(0, 1, len(boxes))
    idxs = rng.integers(0, 3, len(boxes))
    for t in (0.3, 0.6):
        keep = np.concatenate(
            [
                np.flatnonzero(idxs == c)[ref_nms(boxes[idxs == c], scores[idxs == c], t)]
                for c in range(3)
            ]
        )
        expected = keep[np.argsort(-scores[keep], kind="stable")]
        index_case(
            sub.batched_nms(boxes.copy(), scores.copy(), idxs.copy(), t),
            expected,
            f"batched_nms(threshold {t})",
        )
