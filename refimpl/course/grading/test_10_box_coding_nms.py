"""Grading tests for exercise 10: box coding (encode, decode) and NMS (plain and per class).

The oracles are :class:`refimpl.model.box_coder.BoxCoder` and ``BACKENDS["numpy"]``'s
``box_iou`` and ``nms``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from refimpl.course.checks import (
    Code,
    as_array,
    check_array,
    describe,
    drawn,
    fail,
    points,
    recipe,
)
from refimpl.model.box_coder import BoxCoder, decode_boxes, encode_boxes
from refimpl.ops.numpy import box_iou as ref_iou
from refimpl.ops.numpy import nms as ref_nms

CLIP = math.log(1000.0 / 16)


def encode_hints(gt, ref, weights):
    return [
        ("the weights not applied: dx = wx * (gt_cx - cx) / w, ..., dw = ww * log(gt_w / w)",
         lambda: encode_boxes(gt, ref, (1.0, 1.0, 1.0, 1.0))),
        ("gt_boxes and reference_boxes swapped: the deltas take reference_boxes to gt_boxes",
         lambda: encode_boxes(ref, gt, weights)),
    ]  # fmt: skip


def decode_hints(deltas, ref, weights):
    ww, wh = weights[2:]

    def clamped(low=False, before=False):
        d = deltas.clone()
        if low:
            d[:, 2::4] = d[:, 2::4].clamp(min=-CLIP * ww)
            d[:, 3::4] = d[:, 3::4].clamp(min=-CLIP * wh)
        if before:  # clamped before dividing by the weights
            d[:, 2::4], d[:, 3::4] = d[:, 2::4].clamp(max=CLIP), d[:, 3::4].clamp(max=CLIP)
            return decode_boxes(d, ref, weights, math.inf)
        return decode_boxes(d, ref, weights)

    return [
        ("the clamp missing: dw, dh = (deltas / weights) clamped at max=log(1000 / 16)",
         lambda: decode_boxes(deltas, ref, weights, math.inf)),
        ("dw, dh clamped from below too: only max=log(1000 / 16), not min",
         lambda: clamped(low=True)),
        ("dw, dh clamped before dividing by the weights (ww, wh): divide, then clamp",
         lambda: clamped(before=True)),
        ("the weights not applied (dx = deltas[:, 0::4] / wx, ...)",
         lambda: decode_boxes(deltas, ref, (1.0, 1.0, 1.0, 1.0))),
    ]  # fmt: skip


def variant_nms(boxes, scores, threshold, *, ge=False, ascending=False, stable=True):
    """Greedy NMS as a typical bug does it."""
    order = np.argsort(scores if ascending else -scores, kind="stable" if stable else None)
    if not stable:  # an unstable sort: ties in reverse index order
        order = np.lexsort((-np.arange(len(scores)), scores if ascending else -scores))
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        iou = ref_iou(boxes[best][None], boxes[rest])[0]
        order = rest[~((iou >= threshold) if ge else (iou > threshold))]
    return np.array(keep, np.int64)


def nms_hints(boxes, scores, threshold):
    return [
        ("IoU >= threshold suppresses: only a strictly greater IoU suppresses (iou > threshold)",
         lambda: variant_nms(boxes, scores, threshold, ge=True)),
        ("the lower score kept: sort by decreasing score (np.argsort(-scores)) and keep the best",
         lambda: variant_nms(boxes, scores, threshold, ascending=True)),
        ("an unstable sort: equal scores keep the lower index first (kind='stable')",
         lambda: variant_nms(boxes, scores, threshold, stable=False)),
    ]  # fmt: skip


def tensor_out(got, what):
    if not isinstance(got, torch.Tensor):
        fail(f"{what} returned a {type(got).__name__}, not a torch.Tensor")
    return got.detach().numpy()


def index_case(got, expected, what, inputs="", hints=()):
    got = as_array(got, what)
    if got.dtype.kind not in "iu":
        fail(f"{what}: expected integer indices, got dtype {got.dtype}\n  {inputs}")
    check_array(got.astype(np.int64), expected, what, inputs=inputs, hints=hints)


@points(2)
def test_encode_known(sub):
    """encode: a known answer with weights (1, 1, 1, 1) and (10, 10, 5, 5)"""
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0], [10.0, 10.0, 14.0, 12.0]], dtype=torch.float64)
    gt = torch.tensor([[5.0, 0.0, 15.0, 40.0], [10.0, 10.0, 14.0, 12.0]], dtype=torch.float64)
    for w, expected in (
        ((1.0, 1.0, 1.0, 1.0), [[0.5, 0.5, 0.0, np.log(2)], [0, 0, 0, 0]]),
        ((10.0, 10.0, 5.0, 5.0), [[5, 5, 0, 5 * np.log(2)], [0, 0, 0, 0]]),
    ):
        got = tensor_out(sub.encode(gt, ref, w), "encode")
        check_array(
            got,
            np.array(expected),
            f"encode(gt, ref, {w})",
            inputs=describe("encode", gt_boxes=gt, reference_boxes=ref, weights=w),
            hints=encode_hints(gt, ref, w),
        )


@points(2)
def test_encode_random(sub):
    """encode: random boxes, float32 and float64, against BoxCoder"""
    rng = np.random.default_rng(100)
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        ref = drawn(rng, f"torch.from_numpy(checks.random_boxes(rng, 50)).to({dtype})")
        gt = drawn(rng, f"torch.from_numpy(checks.random_boxes(rng, 50)).to({dtype})")
        for w in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
            got = tensor_out(sub.encode(gt, ref, w), "encode")
            check_array(
                got,
                BoxCoder(w).encode(gt, ref).numpy(),
                f"encode({dtype}, {w})",
                rtol=tol,
                atol=tol,
                inputs=describe("encode", gt_boxes=gt, reference_boxes=ref, weights=w),
                hints=encode_hints(gt, ref, w),
            )


@points(2)
def test_decode_random(sub):
    """decode: random deltas, one and three sets per box, against BoxCoder"""
    rng = np.random.default_rng(101)
    for k in (1, 3):
        ref = drawn(rng, "torch.from_numpy(checks.random_boxes(rng, 40))")
        deltas = drawn(rng, f"torch.from_numpy(rng.normal(0, 0.5, (40, {4 * k})))")
        for w in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
            got = tensor_out(sub.decode(deltas, ref, w), "decode")
            check_array(
                got,
                BoxCoder(w).decode(deltas, ref).numpy(),
                f"decode(K={k}, {w})",
                inputs=describe("decode", deltas=deltas, reference_boxes=ref, weights=w),
                hints=decode_hints(deltas, ref, w),
            )


@points(1)
def test_decode_inverts_encode(sub):
    """decode(encode(gt, ref), ref) == gt"""
    rng = np.random.default_rng(102)
    ref = drawn(rng, "torch.from_numpy(checks.random_boxes(rng, 30))")
    gt = drawn(rng, "torch.from_numpy(checks.random_boxes(rng, 30))")
    w = (10.0, 10.0, 5.0, 5.0)
    deltas = BoxCoder(w).encode(gt, ref)
    got = tensor_out(sub.decode(deltas, ref, w), "decode")
    inputs = describe(
        "decode",
        deltas=Code(
            "BoxCoder(w).encode(gt, ref)",
            recipe("gt", gt),
            recipe("ref", ref),
            "from refimpl.model.box_coder import BoxCoder; w = (10.0, 10.0, 5.0, 5.0)",
        ),
        reference_boxes=ref,
        weights=Code("w"),
    )
    check_array(
        got[:, 0],
        gt.numpy(),
        "decode(encode(gt, ref), ref)",
        rtol=1e-9,
        atol=1e-9,
        inputs=inputs,
        hints=[(cause, lambda v=v: v()[:, 0]) for cause, v in decode_hints(deltas, ref, w)],
    )


@points(2)
def test_decode_clamps(sub):
    """decode: dw, dh clamped at log(1000 / 16); large negative ones are not clamped"""
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 3, dtype=torch.float64)
    deltas = torch.tensor(
        [[0.0, 0.0, 100.0, 5.0], [0.0, 0.0, -8.0, 50.0], [1.0, -1.0, 1e4, 0.0]], dtype=torch.float64
    )
    got = tensor_out(sub.decode(deltas, ref, (1.0, 1.0, 1.0, 1.0)), "decode")
    expected = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(deltas, ref).numpy()
    w = (1.0, 1.0, 1.0, 1.0)
    check_array(
        got,
        expected,
        "decode(huge dw, dh)",
        inputs=describe("decode", deltas=deltas, reference_boxes=ref, weights=w),
        hints=decode_hints(deltas, ref, w),
    )


@points(2)
def test_box_iou(sub):
    """box_iou: random boxes, touching and nested boxes"""
    rng = np.random.default_rng(103)
    a, b = drawn(rng, "checks.random_boxes(rng, 12)"), drawn(rng, "checks.random_boxes(rng, 9)")
    iou_case(sub, a, b, "box_iou(random)")
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10.0]])
    b = np.array([[10, 0, 20, 10], [2, 2, 5, 5.0], [0, 0, 10, 10]])
    iou_case(sub, a, b, "box_iou(touching, nested, equal)")


def iou_case(sub, a, b, what):
    def legacy():  # widths x2 - x1 + 1
        a1, b1 = a.copy(), b.copy()
        a1[:, 2:] += 1
        b1[:, 2:] += 1
        return ref_iou(a1, b1)

    hints = [
        ("widths as x2 - x1 + 1 (the old pixel convention): here a box is x2 - x1 wide", legacy),
        ("the IoU of b with a: box_iou(a, b) is [len(a), len(b)]", lambda: ref_iou(b, a).T),
    ]
    inputs = describe("box_iou", boxes1=a, boxes2=b)
    check_array(sub.box_iou(a.copy(), b.copy()), ref_iou(a, b), what, inputs=inputs, hints=hints)


@points(3)
def test_nms_random(sub):
    """nms: random clusters of 90 and of 1500 boxes, thresholds 0.3 to 0.7"""
    rng = np.random.default_rng(104)
    boxes = drawn(
        rng,
        "np.concatenate([np.concatenate([c - 20, c + 20]) + rng.normal(0, 4, (15, 4))"
        " for c in rng.uniform(0, 200, (6, 2))])",
    )
    scores = drawn(rng, "rng.uniform(0, 1, 90)")
    cases = [(boxes, scores, t) for t in (0.3, 0.5, 0.7)]
    # As many boxes as the capstone's proposals of one image: an NMS that works on blocks of
    # boxes (the exercise's speed note) must also carry its choices from block to block.
    many = drawn(
        rng,
        "np.concatenate([np.concatenate([c - 12, c + 12]) + rng.normal(0, 3, (25, 4))"
        " for c in rng.uniform(0, 300, (60, 2))])",
    )
    cases += [(many, drawn(rng, "rng.uniform(0, 1, 1500)"), t) for t in (0.3, 0.7)]
    for boxes, scores, t in cases:
        index_case(
            sub.nms(boxes.copy(), scores.copy(), t),
            ref_nms(boxes, scores, t),
            f"nms(threshold {t}, {len(boxes)} boxes)",
            describe("nms", boxes=boxes, scores=scores, iou_threshold=t),
            nms_hints(boxes, scores, t),
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
            describe("nms", boxes=boxes, scores=scores, iou_threshold=t),
            nms_hints(boxes, scores, t),
        )
    got = as_array(sub.nms(np.zeros((0, 4)), np.zeros(0), 0.5), "nms(no boxes)")
    if got.size != 0:
        fail(
            f"nms of no boxes: expected no indices, got {got}\n  to reproduce:\n"
            "    nms(np.zeros((0, 4)), np.zeros(0), 0.5)"
        )


@points(3)
def test_batched_nms(sub):
    """batched_nms: boxes of different classes never suppress each other"""
    rng = np.random.default_rng(105)
    boxes = drawn(  # some negative coordinates
        rng,
        "np.concatenate([np.concatenate([c - 15, c + 15]) + rng.normal(0, 3, (12, 4))"
        " for c in rng.uniform(0, 100, (4, 2))]) - 20",
    )
    scores = drawn(rng, "rng.uniform(0, 1, 48)")
    idxs = drawn(rng, "rng.integers(0, 3, 48)")
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
            describe("batched_nms", boxes=boxes, scores=scores, idxs=idxs, iou_threshold=t),
            [
                (
                    "classes not kept apart: boxes of different idxs never suppress each other",
                    lambda t=t: ref_nms(boxes, scores, t),
                ),
                (
                    "the kept boxes not sorted by decreasing score (over all classes)",
                    lambda keep=keep: keep,
                ),
            ],
        )
