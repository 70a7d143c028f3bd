"""Grading tests for exercise 11: the matcher, the balanced sampler, FPN level assignment.

The oracles are :class:`refimpl.model.matcher.Matcher`,
:class:`refimpl.model.sampler.BalancedPositiveNegativeSampler` and
:class:`refimpl.ops.LevelMapper`.
"""

from __future__ import annotations

import textwrap

import numpy as np
import torch

from refimpl.course.checks import Code, check_array, describe, drawn, drawn_code, fail, points
from refimpl.model.matcher import Matcher
from refimpl.model.sampler import BalancedPositiveNegativeSampler
from refimpl.ops import LevelMapper


def indices(got, what, inputs=""):
    suffix = "\n" + textwrap.indent(inputs, "  ") if inputs else ""
    if not isinstance(got, torch.Tensor):
        fail(f"{what} returned a {type(got).__name__}, not a torch.Tensor{suffix}")
    if got.dtype != torch.int64:
        fail(f"{what}: expected dtype torch.int64, got {got.dtype}{suffix}")
    return got.numpy()


def variant_match(iou, high, low, allow, *, gt_high=False, le_low=False, low_quality="ties"):
    """The matcher as a typical bug writes it."""
    vals, matches = iou.max(dim=0)
    raw = matches.clone()
    below = vals <= low if le_low else vals < low
    between = ~below & ((vals <= high) if gt_high else (vals < high))
    matches[below], matches[between] = -1, -2
    if allow and low_quality != "none":
        best = iou.max(dim=1).values
        if low_quality == "argmax":
            gt, pred = torch.arange(len(best)), iou.argmax(dim=1)
        else:
            gt, pred = (iou == best[:, None]).nonzero(as_tuple=True)
        matches[pred] = gt if low_quality == "own_gt" else raw[pred]
    return matches


def match_hints(iou, high, low, allow):
    def v(**kwargs):
        return lambda: variant_match(iou.clone(), high, low, allow, **kwargs)

    hints = [
        ("IoU == high_threshold not matched: a prediction is matched at IoU >= high_threshold",
         v(gt_high=True)),
        ("IoU == low_threshold counted negative (-1): negatives are IoU < low_threshold; "
         "low <= IoU < high is -2", v(le_low=True)),
    ]  # fmt: skip
    if allow:
        hints += [
            ("low-quality matches dropped: with allow_low_quality_matches, every GT's best "
             "predictions are matched whatever their IoU", v(low_quality="none")),
            ("one low-quality match per GT (argmax): every prediction tied at a GT's best IoU "
             "is matched (iou == best_per_gt[:, None])", v(low_quality="argmax")),
            ("a low-quality match given to the GT whose best it is: it keeps the GT it overlaps "
             "most (the raw argmax over GTs)", v(low_quality="own_gt")),
        ]  # fmt: skip
    return hints


def match_case(sub, iou, high, low, allow):
    what = f"match(iou, {high}, {low}, {allow})"
    inputs = describe(
        "match", iou=iou, high_threshold=high, low_threshold=low, allow_low_quality_matches=allow
    )
    got = indices(sub.match(iou.clone(), high, low, allow), what, inputs)
    expected = Matcher(high, low, allow)(iou.clone()).numpy()
    check_array(got, expected, what, inputs=inputs, hints=match_hints(iou, high, low, allow))


def quantized_iou(rng, m, n):
    """IoUs on a coarse grid: ties within rows and columns, values exactly on thresholds."""
    return drawn(rng, f"torch.from_numpy(rng.integers(0, 11, ({m}, {n})) / 10.0).float()")


def variant_sample(labels, batch, fraction, seed, *, negatives_first=False, unsorted=False):
    """Per image (positives, negatives) as a typical bug draws them."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for lab in labels:
        positive, negative = torch.where(lab >= 1)[0], torch.where(lab == 0)[0]
        num_pos = min(positive.numel(), int(batch * fraction))
        num_neg = min(negative.numel(), batch - num_pos)
        draws = [(positive, num_pos), (negative, num_neg)]
        for_order = draws[::-1] if negatives_first else draws
        chosen = {
            id(idx): idx[torch.randperm(idx.numel(), generator=generator)[:k]]
            for idx, k in for_order
        }
        pos, neg = chosen[id(positive)], chosen[id(negative)]
        out.append((pos, neg) if unsorted else (pos.sort().values, neg.sort().values))
    return out


def sample_hints(labels, batch, fraction, seed, image, kind):
    def v(**kwargs):
        return lambda: variant_sample(labels, batch, fraction, seed, **kwargs)[image][kind]

    return [
        ("negatives drawn before positives: per image, one torch.randperm(#positives, "
         "generator=generator), then one of the negatives", v(negatives_first=True)),
        ("indices in the order drawn: return each image's indices sorted", v(unsorted=True)),
    ]  # fmt: skip


@points(2)
def test_match_thresholds(sub):
    """match: matched, below (-1) and between (-2) the thresholds, on random IoUs"""
    rng = np.random.default_rng(110)
    for high, low in ((0.7, 0.3), (0.5, 0.5), (0.5, 0.4)):
        iou = drawn(rng, "torch.from_numpy(rng.uniform(0, 1, (4, 30))).float()")
        match_case(sub, iou, high, low, False)


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
        labels, code = drawn_code(
            rng,
            "labels",
            "[torch.from_numpy(rng.choice([-1, 0, 0, 0, 1, 2], 60)) for _ in range(3)]",
        )
        inputs = describe(
            "sample",
            labels=code,
            batch_size_per_image=batch,
            positive_fraction=frac,
            generator=Code("torch.Generator().manual_seed(7)"),
        )
        pos, neg = sub.sample(
            [t.clone() for t in labels], batch, frac, torch.Generator().manual_seed(7)
        )
        ref_pos, ref_neg = BalancedPositiveNegativeSampler(
            batch, frac, torch.Generator().manual_seed(7)
        )(labels)
        if len(pos) != 3 or len(neg) != 3:
            fail(
                f"sample must return one tensor per image (3) in each list: {len(pos)}, {len(neg)}"
                "\n" + textwrap.indent(inputs, "  ")
            )
        for i in range(3):
            for kind, got, expected in ((0, pos, ref_pos), (1, neg, ref_neg)):
                check_array(
                    indices(got[i], "sample", inputs),
                    expected[i].numpy(),
                    f"{('positives', 'negatives')[kind]} of image {i}",
                    inputs=inputs,
                    hints=sample_hints(labels, batch, frac, 7, i, kind),
                )


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
        lab = labels[0].numpy()
        what = f"sample(labels={lab.tolist()}, {batch}, {frac})"
        inputs = describe(
            "sample",
            labels=Code(f"[torch.tensor({lab.tolist()})]"),
            batch_size_per_image=batch,
            positive_fraction=frac,
            generator=Code("torch.Generator().manual_seed(0)"),
        )
        suffix = "\n" + textwrap.indent(inputs, "  ")
        p, n = indices(pos[0], "sample", inputs), indices(neg[0], "sample", inputs)
        if len(p) != n_pos or len(n) != n_neg:
            hint = ""
            if len(n) == min(int((lab == 0).sum()), batch - int(batch * frac)) != n_neg:
                hint = (
                    "\n  likely cause: num_neg = batch_size_per_image - num_pos, with num_pos "
                    "the positives actually taken: few positives are padded with negatives"
                )
            fail(
                f"{what}: expected {n_pos} positives, {n_neg} negatives; got {len(p)}, {len(n)}"
                f"{hint}{suffix}"
            )
        if (
            (lab[p] < 1).any()
            or (lab[n] != 0).any()
            or (np.diff(p) <= 0).any()
            or (np.diff(n) <= 0).any()
        ):
            fail(
                f"{what}: positives {p.tolist()}, negatives {n.tolist()}: wrong labels or unsorted"
                f"{suffix}"
            )


@points(2)
def test_fpn_level(sub):
    """fpn_level: random boxes, the canonical sizes exactly, clamping at both ends"""
    rng = np.random.default_rng(114)
    boxes = drawn(
        rng,
        "torch.from_numpy(np.concatenate([xy := rng.uniform(0, 100, (200, 2)),"
        " xy + np.exp(rng.uniform(np.log(4), np.log(1200), (200, 2)))], 1)).float()",
    )
    exact = torch.tensor([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 448, 448], [5, 5, 61, 61.0]])
    for b, args in (
        (boxes, (2, 5, 224.0, 4)),
        (exact, (2, 5, 224.0, 4)),
        (boxes, (2, 5, 56.0, 4)),
        (boxes, (3, 6, 224.0, 4)),
    ):
        what = f"fpn_level(boxes, *{args})"
        inputs = describe(
            "fpn_level", boxes=b, **dict(zip(("k_min", "k_max", "s0", "k0"), args, strict=True))
        )
        got = indices(sub.fpn_level(b.clone(), *args), what, inputs)
        expected = LevelMapper(*args)([b]).numpy()
        check_array(got, expected, what, inputs=inputs, hints=level_hints(b, *args))


@points(1)
def test_fpn_level_edge_cases(sub):
    """fpn_level: float16 boxes (no overflow), an empty and an inverted box"""
    b = torch.tensor(
        [[0, 0, 300, 300], [0, 0, 40, 40], [5, 5, 5, 5], [10, 10, 2, 30]], dtype=torch.float16
    )
    inputs = describe("fpn_level", boxes=b)
    got = indices(sub.fpn_level(b.clone()), "fpn_level(float16 boxes)", inputs)
    check_array(
        got,
        LevelMapper(2, 5)([b]).numpy(),
        "fpn_level(float16, empty, inverted)",
        inputs=inputs,
        hints=level_hints(b, 2, 5, 224.0, 4),
    )


def level_hints(boxes, k_min, k_max, s0, k0):
    def v(eps=1e-6, rounding=torch.floor, dtype=None):
        b = boxes.to(dtype or torch.promote_types(boxes.dtype, torch.float32))
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        levels = rounding(k0 + torch.log2(torch.sqrt(area) / s0) + eps)
        levels = torch.nan_to_num(levels.float(), nan=float(k_min))
        return torch.clamp(levels, k_min, k_max).to(torch.int64) - k_min

    return [
        ("eps missing: floor(k0 + log2(sqrt(area) / s0) + 1e-6) keeps a box of exactly "
         "s0 * 2**j on level k0 + j", lambda: v(eps=0.0)),
        ("round() where FPN's eq. 1 takes the floor", lambda: v(rounding=torch.round)),
        ("the area computed in float16: it overflows above 65504; compute in float32",
         lambda: v(dtype=boxes.dtype)),
        ("the level itself returned: return the index level - k_min",
         lambda: v() + k_min),
    ]  # fmt: skip
