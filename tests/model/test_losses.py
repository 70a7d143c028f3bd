"""Each loss against hand-computed values, and the mask targets (RoIAlign of the GT masks)."""

from __future__ import annotations

import math

import pytest
import torch

from refimpl.model.losses import fastrcnn_loss, maskrcnn_loss, project_masks_on_boxes, rpn_loss

D = torch.float64


def smooth_l1(d: float, beta: float = 1 / 9) -> float:
    d = abs(d)
    return 0.5 * d * d / beta if d < beta else d - 0.5 * beta


def bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_rpn_loss_by_hand():
    objectness = torch.tensor([2.0, -1.0, 0.5, 3.0], dtype=D)
    labels = torch.tensor([1.0, 0.0, 1.0, -1.0], dtype=D)  # anchor 3 is ignored, never sampled
    deltas = torch.tensor([[0.05, 0, 0, 0], [9, 9, 9, 9], [0.5, 0, 0, -0.2], [7, 7, 7, 7]], dtype=D)
    targets = torch.zeros(4, 4, dtype=D)
    pos, neg = torch.tensor([0, 2]), torch.tensor([1])
    loss_obj, loss_box = rpn_loss(objectness, deltas, labels, targets, pos, neg)
    want_obj = (bce(2.0, 1) + bce(-1.0, 0) + bce(0.5, 1)) / 3
    # only positives regress; the sum is divided by ALL sampled anchors (3)
    want_box = (smooth_l1(0.05) + smooth_l1(0.5) + smooth_l1(-0.2)) / 3
    assert math.isclose(loss_obj.item(), want_obj, rel_tol=1e-12)
    assert math.isclose(loss_box.item(), want_box, rel_tol=1e-12)
    # beta = 0: plain L1 (detectron2)
    _, l1 = rpn_loss(objectness, deltas, labels, targets, pos, neg, beta=0.0)
    assert math.isclose(l1.item(), (0.05 + 0.5 + 0.2) / 3, rel_tol=1e-12)


def test_fastrcnn_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.1, 1.5], [0.0, 3.0, 0.0]], dtype=D)
    labels = torch.tensor([0, 2, 1])
    box_regression = torch.zeros(3, 12, dtype=D)
    box_regression[1, 8:12] = torch.tensor([0.1, -0.3, 0.0, 0.02], dtype=D)  # class 2 of RoI 1
    box_regression[1, 4:8] = 5.0  # another class's deltas: not regressed
    box_regression[0, :] = 9.0  # background RoI: not regressed
    targets = torch.zeros(3, 4, dtype=D)
    targets[2] = torch.tensor([0.0, 0.0, 0.2, 0.0], dtype=D)
    loss_cls, loss_box = fastrcnn_loss(logits, box_regression, labels, targets)

    def ce(row, label):
        return -row[label] + math.log(sum(math.exp(v) for v in row))

    want_cls = sum(ce(logits[i].tolist(), int(labels[i])) for i in range(3)) / 3
    want_box = (smooth_l1(0.1) + smooth_l1(-0.3) + smooth_l1(0.02) + smooth_l1(-0.2)) / 3
    assert math.isclose(loss_cls.item(), want_cls, rel_tol=1e-12)
    assert math.isclose(loss_box.item(), want_box, rel_tol=1e-12)


def test_mask_target_full_mask_is_one():
    gt = torch.zeros(2, 40, 50, dtype=torch.uint8)
    gt[1, 5:35, 10:45] = 1
    box = torch.tensor([[12.3, 7.1, 40.2, 30.8]], dtype=D)  # inside GT 1's mask
    t = project_masks_on_boxes(gt, box, torch.tensor([1]), 28)
    assert t.shape == (1, 28, 28) and t.dtype == D
    torch.testing.assert_close(t, torch.ones_like(t))
    # matched to the empty mask 0 instead: all zero
    assert project_masks_on_boxes(gt, box, torch.tensor([0]), 28).abs().max() == 0


def test_mask_target_half_mask_by_hand():
    # GT: columns 0..13 of a 28 x 28 image; box = the whole image. 28 bins of 1 pixel, one
    # sample per bin (adaptive: ceil(28 / 28)) at the bin's centre x = j + 0.5, which
    # interpolates pixels j and j + 1 half and half (aligned=False: pixel centres at integers)
    gt = torch.zeros(1, 28, 28, dtype=torch.uint8)
    gt[0, :, :14] = 1
    t = project_masks_on_boxes(
        gt, torch.tensor([[0.0, 0.0, 28.0, 28.0]], dtype=D), torch.tensor([0]), 28
    )
    row = torch.tensor([1.0] * 13 + [0.5] + [0.0] * 14, dtype=D)
    torch.testing.assert_close(t[0], row.expand(28, 28))


def test_mask_target_is_soft_and_shifted_box():
    # box shifted by half a pixel: every bin samples across the edge of a single-column mask
    gt = torch.zeros(1, 10, 10, dtype=torch.uint8)
    gt[0, :, 4] = 1
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=D)
    t = project_masks_on_boxes(gt, box, torch.tensor([0]), 5)
    # 5 bins of 2 pixels, 2 samples each at x = 2j + 0.5, 2j + 1.5: bin 1 samples 2.5 (0) and
    # 3.5 (half of column 4); bin 2 samples 4.5 (half) and 5.5 (0)
    torch.testing.assert_close(t[0, 0], torch.tensor([0.0, 0.25, 0.25, 0.0, 0.0], dtype=D))


def mask_case():
    """Two positive RoIs in one image, 3 classes, 4 x 4 masks."""
    gt_masks = [torch.zeros(2, 16, 16, dtype=torch.uint8)]
    gt_masks[0][0, 0:10, 0:10] = 1  # GT 0 covers RoI 0 and the pixel beyond its last sample
    gt_labels = [torch.tensor([2, 1])]  # GT 1's mask is empty
    proposals = [torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 12.0, 12.0]], dtype=D)]
    matched = [torch.tensor([0, 1])]
    return proposals, gt_masks, gt_labels, matched


def test_mask_loss_sigmoid_uses_only_the_gt_class_channel():
    proposals, gt_masks, gt_labels, matched = mask_case()
    logits = torch.full((2, 3, 4, 4), 50.0, dtype=D)  # wrong everywhere ...
    logits[0, 2] = 1.5  # ... but on RoI 0's class-2 channel (target 1)
    logits[1, 1] = -0.5  # and RoI 1's class-1 channel (target 0)
    loss = maskrcnn_loss(logits, proposals, gt_masks, gt_labels, matched)
    want = (16 * bce(1.5, 1) + 16 * bce(-0.5, 0)) / 32
    assert math.isclose(loss.item(), want, rel_tol=1e-12)


def test_mask_loss_softmax_and_agnostic():
    proposals, gt_masks, gt_labels, matched = mask_case()
    logits = torch.zeros(2, 3, 4, 4, dtype=D)
    logits[:, 0] = 0.7  # background channel
    logits[0, 2] = 2.0
    logits[1, 1] = -1.0
    loss = maskrcnn_loss(logits, proposals, gt_masks, gt_labels, matched, mode="softmax")
    # RoI 0: target 1 -> -log p(class 2); RoI 1: target 0 -> -log p(background)
    p0 = math.exp(2.0) / (math.exp(0.7) + 1 + math.exp(2.0))
    p1 = math.exp(0.7) / (math.exp(0.7) + math.exp(-1.0) + 1)
    assert math.isclose(loss.item(), (-math.log(p0) - math.log(p1)) / 2, rel_tol=1e-12)

    agnostic = torch.zeros(2, 1, 4, 4, dtype=D)
    agnostic[0] = 1.0
    agnostic[1] = 2.0
    loss = maskrcnn_loss(agnostic, proposals, gt_masks, gt_labels, matched, mode="agnostic")
    assert math.isclose(loss.item(), (bce(1.0, 1) + bce(2.0, 0)) / 2, rel_tol=1e-12)


def test_mask_loss_soft_and_binarized_targets():
    gt = [torch.zeros(1, 28, 28, dtype=torch.uint8)]
    gt[0][0, :, :14] = 1
    args = (
        [torch.tensor([[0.0, 0.0, 28.0, 28.0]], dtype=D)],
        gt,
        [torch.tensor([1])],
        [torch.tensor([0])],
    )
    logits = torch.zeros(1, 2, 28, 28, dtype=D)
    logits[0, 1] = 3.0
    # the 0.5 column: soft target 0.5 vs binarized (>= 0.5) 1
    soft = maskrcnn_loss(logits, *args)
    hard = maskrcnn_loss(logits, *args, binarize_targets=True)
    want_soft = (13 * bce(3, 1) + bce(3, 0.5) + 14 * bce(3, 0)) / 28
    want_hard = (14 * bce(3, 1) + 14 * bce(3, 0)) / 28
    assert math.isclose(soft.item(), want_soft, rel_tol=1e-12)
    assert math.isclose(hard.item(), want_hard, rel_tol=1e-12)


def test_mask_loss_without_positives_is_a_connected_zero():
    logits = torch.randn(0, 3, 28, 28, dtype=D, requires_grad=True)
    loss = maskrcnn_loss(
        logits,
        [torch.zeros(0, 4, dtype=D)],
        [torch.zeros(1, 8, 8)],
        [torch.tensor([1])],
        [torch.zeros(0, dtype=torch.int64)],
    )
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None


def test_mask_loss_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        maskrcnn_loss(torch.zeros(1, 2, 4, 4), *mask_case(), mode="dice")
