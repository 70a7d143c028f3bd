"""Grading tests for exercise 11: the matcher, the balanced sampler, FPN level assignment.

The oracles are :class:`refimpl.model.matcher.Matcher`,
:class:`refimpl.model.sampler.BalancedPositiveNegativeSampler` and
:class:`refimpl.ops.LevelMapper`.
"""

from __future__ import annotations

import numpy as np
import torch

from refimpl.course.checks import check_array, describe, fail, points
from refimpl.model.matcher import Matcher
from refimpl.model.sampler import BalancedPositiveNegativeSampler
from refimpl.ops import LevelMapper


def indices(got, what):
    if not isinstance(got, torch.Tensor):
        fail(f"{what} returned a {type(got).__name__}, not a torch.Tensor")
    if got.dtype != torch.int64:
        fail(f"{what}: expected dtype torch.int64, got {got.dtype}")
    return got.numpy()


def match_case(sub, iou, high, low, allow):
    what = f"match(iou, {high}, {low}, {allow})"
    got = indices(sub.match(iou.clone(), high, low, allow), what)
    expected = Matcher(high, low, allow)(iou.clone()).numpy()
    inputs = describe(iou=iou.numpy()) if iou.numel() <= 20 else ""
    check_array(got, expected, what, inputs=inputs)


def quantized_iou(rng, m, n):
    """IoUs on a coarse grid: ties within rows and columns, values exactly on thresholds."""
    return torch.from_numpy(rng.integers(0, 11, (m, n)) / 10.0).float()


@points(2)
def test_match_thresholds(sub):
    """match: matched, below (-1) and between (-2) the thresholds, on random IoUs"""
    rng = np.random.default_rng(110)
    for high, low in ((0.7, 0.3), (0.5, 0.5), (0.5, 0.4)):
        match_case(sub, torch.from_numpy(rng.uniform(0, 1, (4, 30))).float(), high, low, False)


@points(1)
def test_match_on_the_thresholds(sub):
    """match: IoU exactly high is matched, exactly low is ignored (not negative)"""
    iou = torch.tensor([[0.7, 0.3, 0.29, 0.5], [0.0, 0.0, 0.0, 0.0]])
    match_case(sub, iou, 0.7, 0.3, False)
    match_case(sub, iou, 0.5, 0.5, False)


@points(3)
def test_match_low_quality(sub):
    """match with low-quality matches: every GT keeps its best predictions, ties included"""
    rng = np.random.default_rng(111)
    iou = torch.tensor([[0.9, 0.4, 0.1, 0.2, 0.4], [0.1, 0.6, 0.2, 0.25, 0.6], [0, 0, 0.05, 0, 0]])
    match_case(sub, iou, 0.7, 0.3, True)
    for _ in range(5):
        match_case(sub, quantized_iou(rng, 5, 40), 0.7, 0.3, True)


@points(1)
def test_match_ties_between_gts(sub):
    """match: a prediction tied between two GTs goes to the lower GT index"""
    rng = np.random.default_rng(112)
    for allow in (False, True):
        match_case(sub, quantized_iou(rng, 6, 25), 0.5, 0.3, allow)


@points(3)
def test_sample_same_draw(sub):
    """sample: the same random draw as refimpl's sampler from the same generator"""
    rng = np.random.default_rng(113)
    for batch, frac in ((16, 0.25), (8, 0.5), (64, 0.25)):
        labels = [torch.from_numpy(rng.choice([-1, 0, 0, 0, 1, 2], 60)) for _ in range(3)]
        pos, neg = sub.sample(
            [t.clone() for t in labels], batch, frac, torch.Generator().manual_seed(7)
        )
        ref_pos, ref_neg = BalancedPositiveNegativeSampler(
            batch, frac, torch.Generator().manual_seed(7)
        )(labels)
        if len(pos) != 3 or len(neg) != 3:
            fail(
                f"sample must return one tensor per image (3) in each list: {len(pos)}, {len(neg)}"
            )
        for i in range(3):
            check_array(indices(pos[i], "sample"), ref_pos[i].numpy(), f"positives of image {i}")
            check_array(indices(neg[i], "sample"), ref_neg[i].numpy(), f"negatives of image {i}")


@points(2)
def test_sample_counts(sub):
    """sample: few positives are padded with negatives; few of both take all; none ignored"""
    cases = [
        ([torch.tensor([1] + [0] * 30)], 8, 0.25, 1, 7),
        ([torch.tensor([1] * 10 + [0] * 30)], 8, 0.25, 2, 6),
        ([torch.tensor([2, 0, -1, -1, 1])], 16, 0.5, 2, 1),
        ([torch.tensor([-1, -1, 0])], 4, 0.5, 0, 1),
    ]
    for labels, batch, frac, n_pos, n_neg in cases:
        pos, neg = sub.sample(labels, batch, frac, torch.Generator().manual_seed(0))
        p, n = indices(pos[0], "sample"), indices(neg[0], "sample")
        lab = labels[0].numpy()
        what = f"sample(labels={lab.tolist()}, {batch}, {frac})"
        if len(p) != n_pos or len(n) != n_neg:
            fail(f"{what}: expected {n_pos} positives, {n_neg} negatives; got {len(p)}, {len(n)}")
        if (
            (lab[p] < 1).any()
            or (lab[n] != 0).any()
            or (np.diff(p) <= 0).any()
            or (np.diff(n) <= 0).any()
        ):
            fail(
                f"{what}: positives {p.tolist()}, negatives {n.tolist()}: wrong labels or unsorted"
            )


@points(2)
def test_fpn_level(sub):
    """fpn_level: random boxes, the canonical sizes exactly, clamping at both ends"""
    rng = np.random.default_rng(114)
    xy = rng.uniform(0, 100, (200, 2))
    wh = np.exp(rng.uniform(np.log(4), np.log(1200), (200, 2)))
    boxes = torch.from_numpy(np.concatenate([xy, xy + wh], 1)).float()
    exact = torch.tensor([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 448, 448], [5, 5, 61, 61.0]])
    for b, args in (
        (boxes, (2, 5, 224.0, 4)),
        (exact, (2, 5, 224.0, 4)),
        (boxes, (2, 5, 56.0, 4)),
        (boxes, (3, 6, 224.0, 4)),
    ):
        got = indices(sub.fpn_level(b.clone(), *args), f"fpn_level(boxes, *{args})")
        check_array(got, LevelMapper(*args)([b]).numpy(), f"fpn_level(boxes, *{args})")


@points(1)
def test_fpn_level_edge_cases(sub):
    """fpn_level: float16 boxes (no overflow), an empty and an inverted box"""
    b = torch.tensor(
        [[0, 0, 300, 300], [0, 0, 40, 40], [5, 5, 5, 5], [10, 10, 2, 30]], dtype=torch.float16
    )
    got = indices(sub.fpn_level(b.clone()), "fpn_level(float16 boxes)")
    check_array(got, LevelMapper(2, 5)([b]).numpy(), "fpn_level(float16, empty, inverted)")
