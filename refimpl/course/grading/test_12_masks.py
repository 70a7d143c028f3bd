"""Grading tests for exercise 12: mask targets, the mask losses, mask pasting.

The oracles are :func:`refimpl.model.losses.project_masks_on_boxes`,
:func:`refimpl.model.losses.maskrcnn_loss` and
:func:`refimpl.model.transform.paste_masks_in_image`.
"""

from __future__ import annotations

import numpy as np
import torch

from refimpl.course.checks import Code, check_array, describe, drawn, fail, points, recipe
from refimpl.model import losses, transform
from refimpl.ops import roi_align

GIVENS = {"refimpl.ops": "*"}  # exercise 12 gives RoIAlign (refimpl.ops.roi_align, lesson 8)

# Forked test processes: numba's GNU OpenMP layer and torch's OpenMP pool are not fork-safe
# (the notebook's cells may have started them: roi_align runs refimpl's numba kernels).
ENVIRONMENT = {"NUMBA_THREADING_LAYER": "workqueue", "OMP_NUM_THREADS": "1"}


def tensor(got, what):
    if not isinstance(got, torch.Tensor):
        fail(f"{what} returned a {type(got).__name__}, not a torch.Tensor")
    return got.detach().numpy()


def random_masks(rng, g, h, w):
    return drawn(rng, f"torch.from_numpy(checks.random_masks(rng, {g}, {h}, {w}))")


def random_boxes(rng, r, h, w, dtype=torch.float64):
    to = "" if dtype == torch.float64 else f".to({dtype})"
    return drawn(rng, f"torch.from_numpy(checks.random_image_boxes(rng, {r}, {h}, {w})){to}")


def loss_inputs(rng, r=5, c=4, m=7):
    logits = drawn(rng, f"torch.from_numpy(rng.normal(0, 2, ({r}, {c}, {m}, {m})))")
    labels = drawn(rng, f"torch.from_numpy(rng.integers(1, {c}, {r}))")
    targets = drawn(rng, f"torch.from_numpy(rng.uniform(0, 1, ({r}, {m}, {m})))")
    return logits, labels, targets


def target_hints(gt, boxes, idx, resolution):
    def projected(ratio=-1, aligned=False, first=False):
        def op(masks, rois, size, scale, *_):
            if first:  # every RoI cropped from GT 0
                rois = torch.cat([torch.zeros_like(rois[:, :1]), rois[:, 1:]], 1)
            return roi_align(masks, rois, size, scale, ratio, aligned)

        return lambda: losses.project_masks_on_boxes(gt, boxes, idx, resolution, op)

    def thresholded():
        return (losses.project_masks_on_boxes(gt, boxes, idx, resolution) >= 0.5).to(boxes)

    return [
        ("aligned=True: the targets are cropped by RoIAlign with aligned=False (as the "
         "predicted masks' features are)", projected(aligned=True)),
        ("a fixed sampling_ratio: RoIAlign's adaptive sampling (-1) makes the targets",
         projected(ratio=2)),
        ("every RoI cropped from the first GT mask: the batch index of a RoI is its "
         "matched_idxs (rois = cat([matched_idxs[:, None], boxes], 1))", projected(first=True)),
        ("thresholded targets: they stay soft (fractions in [0, 1])", thresholded),
    ]  # fmt: skip


def loss_hints(logits, labels, targets, mode):
    rois = torch.arange(targets.shape[0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    if mode == "sigmoid":
        return [
            ("a softmax over the classes: Mask R-CNN's mask loss is a per-class sigmoid (BCE "
             "on the GT class's channel)", lambda: ref_loss(logits, labels, targets, "softmax")),
            ("BCE on every class's channel: only the GT class's channel mask_logits[rois, "
             "labels] is in the loss", lambda: bce(logits, targets[:, None].expand_as(logits))),
            ("the sum over RoIs and pixels: the loss is their mean",
             lambda: bce(logits[rois, labels], targets, reduction="sum")),
        ]  # fmt: skip
    log_p = torch.log_softmax(logits, dim=1)
    return [
        ("a per-class sigmoid: softmax_mask_loss is a softmax over the classes",
         lambda: ref_loss(logits, labels, targets, "sigmoid")),
        ("the background term missing: (1 - targets) * log p[background] counts too",
         lambda: -(targets * log_p[rois, labels]).mean()),
    ]  # fmt: skip


def paste_hints(mask, box, height, width):
    def unpadded():
        return transform.paste_masks_in_image(mask[None, None], box[None], (height, width), 0)

    return [
        (
            "paste without the zero-padding: pad the mask by one pixel of zeros per side (and "
            "scale the box by (M + 2) / M) before the bilinear resize",
            lambda: unpadded()[0, 0],
        ),
    ]


def ref_loss(logits, labels, targets, mode):
    """maskrcnn_loss's formulas on given targets (test_losses_match_refimpl checks the
    formulas against maskrcnn_loss itself)."""
    rois = torch.arange(targets.shape[0])
    if mode == "sigmoid":
        return torch.nn.functional.binary_cross_entropy_with_logits(logits[rois, labels], targets)
    log_p = torch.log_softmax(logits, dim=1)
    return -(targets * log_p[rois, labels] + (1 - targets) * log_p[:, 0]).mean()


@points(2)
def test_mask_targets_known(sub):
    """mask_targets: boxes inside and outside a square and a half-plane, known answers"""
    gt = torch.zeros(2, 32, 32)
    gt[0, 8:24, 8:24] = 1
    gt[1, :, 16:] = 1
    boxes = torch.tensor([[9.0, 9.0, 22.0, 22.0], [16.0, 0.0, 32.0, 16.0], [0, 0, 14, 16.0]])
    idx = torch.tensor([0, 1, 1])
    got = tensor(sub.mask_targets(gt, boxes, idx, 4), "mask_targets")
    expected = np.ones((3, 4, 4))
    expected[2] = 0
    inputs = describe(
        "mask_targets",
        gt_masks=Code(
            "gt", "gt = torch.zeros(2, 32, 32); gt[0, 8:24, 8:24] = 1; gt[1, :, 16:] = 1"
        ),
        boxes=boxes,
        matched_idxs=idx,
        resolution=4,
    )
    check_array(
        got,
        expected,
        "mask_targets(square, half-plane)",
        check_dtype=False,
        inputs=inputs,
        hints=target_hints(gt, boxes, idx, 4),
    )


@points(3)
def test_mask_targets_random(sub):
    """mask_targets: random masks, boxes partly off the image, several GTs, M = 28"""
    rng = np.random.default_rng(120)
    for dtype in (torch.float64, torch.float32):
        gt = random_masks(rng, 3, 40, 48)
        boxes = random_boxes(rng, 9, 40, 48, dtype)
        idx = drawn(rng, "torch.from_numpy(rng.integers(0, 3, 9))")
        got = tensor(sub.mask_targets(gt.clone(), boxes.clone(), idx.clone(), 28), "mask_targets")
        expected = losses.project_masks_on_boxes(gt, boxes, idx, 28).numpy()
        tol = 1e-9 if dtype == torch.float64 else 1e-5
        check_array(
            got,
            expected,
            f"mask_targets({dtype})",
            rtol=tol,
            atol=tol,
            inputs=describe("mask_targets", gt_masks=gt, boxes=boxes, matched_idxs=idx, M=28),
            hints=target_hints(gt, boxes, idx, 28),
        )


@points(1)
def test_mask_targets_no_rois(sub):
    """mask_targets: no RoIs gives [0, M, M]"""
    got = sub.mask_targets(
        torch.zeros(2, 8, 8), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 5
    )
    if tuple(tensor(got, "mask_targets").shape) != (0, 5, 5):
        fail(
            f"mask_targets with no RoIs: expected shape (0, 5, 5), got {tuple(got.shape)}\n"
            "  to reproduce:\n    mask_targets(torch.zeros(2, 8, 8), torch.zeros(0, 4), "
            "torch.zeros(0, dtype=torch.int64), 5)"
        )


@points(2)
def test_mask_loss(sub):
    """mask_loss: per-class sigmoid BCE on the GT class's channel"""
    rng = np.random.default_rng(121)
    for r, c in ((5, 4), (1, 2), (8, 81)):
        logits, labels, targets = loss_inputs(rng, r, c)
        got = sub.mask_loss(logits, labels, targets)
        check_array(
            tensor(got, "mask_loss"),
            ref_loss(logits, labels, targets, "sigmoid").numpy(),
            f"mask_loss({r} RoIs, {c} classes)",
            inputs=describe("mask_loss", mask_logits=logits, labels=labels, targets=targets),
            hints=loss_hints(logits, labels, targets, "sigmoid"),
        )


@points(1)
def test_mask_loss_gradient(sub):
    """mask_loss: only the GT class's channel gets a gradient"""
    rng = np.random.default_rng(122)
    logits, labels, targets = loss_inputs(rng)
    inputs = describe("mask_loss", mask_logits=logits, labels=labels, targets=targets)
    inputs = "\n  " + inputs.replace("\n", "\n  ").replace(
        "mask_loss(mask_logits, labels, targets)",
        "mask_logits.requires_grad_(); mask_loss(mask_logits, labels, targets).backward()",
    )
    logits.requires_grad_()
    sub.differentiable("mask_loss")(logits, labels, targets).backward()
    if logits.grad is None:
        fail(f"mask_loss is not connected to mask_logits (no gradient){inputs}")
    other = torch.ones_like(logits, dtype=torch.bool)
    other[torch.arange(len(labels)), labels] = False
    if logits.grad[other].abs().max() > 0:
        fail(
            "mask_loss sends gradient to channels other than each RoI's GT class"
            "\n  likely cause: the loss on every class's channel, or a softmax over the classes:"
            " take mask_logits[torch.arange(R), labels] before the BCE" + inputs
        )


@points(2)
def test_softmax_mask_loss(sub):
    """softmax_mask_loss: per-pixel softmax cross-entropy, GT class inside, background out"""
    rng = np.random.default_rng(123)
    for r, c in ((5, 4), (3, 2)):
        logits, labels, targets = loss_inputs(rng, r, c)
        got = sub.softmax_mask_loss(logits, labels, targets)
        check_array(
            tensor(got, "softmax_mask_loss"),
            ref_loss(logits, labels, targets, "softmax").numpy(),
            f"softmax_mask_loss({r} RoIs, {c} classes)",
            inputs=describe(
                "softmax_mask_loss", mask_logits=logits, labels=labels, targets=targets
            ),
            hints=loss_hints(logits, labels, targets, "softmax"),
        )


@points(1)
def test_losses_match_refimpl(sub):
    """both losses on refimpl's own targets equal refimpl's maskrcnn_loss"""
    rng = np.random.default_rng(124)
    gt = random_masks(rng, 2, 32, 32)
    boxes = random_boxes(rng, 4, 32, 32, torch.float32)
    idx = drawn(rng, "torch.from_numpy(rng.integers(0, 2, 4))")
    gt_labels = torch.tensor([2, 1])
    logits = drawn(rng, "torch.from_numpy(rng.normal(0, 1, (4, 3, 14, 14))).float()")
    targets = losses.project_masks_on_boxes(gt, boxes, idx, 14)
    setup = [recipe(name, v) for name, v in (("gt", gt), ("boxes", boxes), ("idx", idx))]
    setup.append(
        "from refimpl.model import losses; "
        "targets = losses.project_masks_on_boxes(gt, boxes, idx, 14)"
    )
    for mode, name in (("sigmoid", "mask_loss"), ("softmax", "softmax_mask_loss")):
        expected = losses.maskrcnn_loss(logits, [boxes], [gt], [gt_labels], [idx], mode=mode)
        got = getattr(sub, name)(logits, gt_labels[idx], targets)
        inputs = describe(
            name,
            mask_logits=logits,
            labels=Code("torch.tensor([2, 1])[idx]"),
            targets=Code("targets", *setup),
        )
        hints = loss_hints(logits, gt_labels[idx], targets, mode)
        check_array(
            tensor(got, name), expected.numpy(), name, rtol=1e-5, atol=1e-6, inputs=inputs,
            hints=hints,
        )  # fmt: skip


@points(1)
def test_losses_no_rois(sub):
    """no RoIs: both losses are 0, not NaN, and still connected to the graph"""
    logits = torch.zeros(0, 3, 7, 7, requires_grad=True)
    for name in ("mask_loss", "softmax_mask_loss"):
        got = getattr(sub, name)(logits, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 7, 7))
        call = (
            f"\n  to reproduce:\n    {name}(torch.zeros(0, 3, 7, 7, requires_grad=True), "
            "torch.zeros(0, dtype=torch.int64), torch.zeros(0, 7, 7))"
        )
        v = tensor(got, name)
        if not (v.shape == () and v == 0):
            hint = "\n  likely cause: the mean of no values is NaN" if np.isnan(v).any() else ""
            fail(f"{name} with no RoIs: expected a scalar 0, got {v}{hint}{call}")
        if not got.requires_grad:
            fail(
                f"{name} with no RoIs must stay connected to the graph (mask_logits.sum() * 0)"
                + call
            )


def check_paste(sub, mask, box, height=64, width=80):
    """The learner's ``paste_mask`` of ``mask`` in ``box`` ([1, 4]) against refimpl's."""
    got = tensor(sub.paste_mask(mask.clone(), box[0].clone(), height, width), "paste_mask")
    expected = transform.paste_masks_in_image(mask[None, None], box, (height, width))[0, 0]
    check_array(
        got,
        expected.numpy(),
        "paste_mask",
        inputs=describe("paste_mask", mask=mask, box=box[0], height=height, width=width),
        hints=paste_hints(mask, box[0], height, width),
    )


@points(3)
def test_paste_mask(sub):
    """paste_mask: random masks and boxes, against paste_masks_in_image"""
    rng = np.random.default_rng(125)
    for _ in range(6):
        m = int(rng.choice([7, 14, 28]))
        mask = drawn(rng, f"torch.from_numpy(rng.uniform(0, 1, ({m}, {m})))")
        xy = rng.uniform(0, 50, 2)
        box = torch.from_numpy(np.concatenate([xy, xy + rng.uniform(4, 40, 2)]))[None]
        check_paste(sub, mask, box)


@points(1)
def test_paste_mask_edges(sub):
    """paste_mask: boxes across the image border, a tiny box, a box outside"""
    rng = np.random.default_rng(126)
    mask = drawn(rng, "torch.from_numpy(rng.uniform(0, 1, (28, 28)))")
    for b in (
        [-10.5, -7.2, 20.1, 15.8],
        [50.3, 40.2, 95.0, 70.0],
        [5.2, 5.9, 5.6, 6.1],
        [100.0, 100.0, 120.0, 110.0],
    ):
        box = torch.tensor([b], dtype=torch.float64)
        check_paste(sub, mask, box)
