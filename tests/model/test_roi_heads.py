"""The RoI heads: training samples (GT appended, matching, sampling) and inference
postprocessing, on hand-made cases."""

from __future__ import annotations

import math

import torch

from refimpl.model import maskrcnn_fpn

D = torch.float64


def heads(**kw):
    model = maskrcnn_fpn(
        3,
        backbone="small",
        backbone_width=4,
        fpn_channels=4,
        representation_size=8,
        mask_layers=(4,),
        **kw,
    )
    return model.roi_heads.double()


def test_gt_boxes_are_appended_and_matched():
    rh = heads(box_batch_size_per_image=16, box_positive_fraction=0.5)
    rh.fg_bg_sampler.deterministic = True
    proposals = [
        torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [1, 1, 9, 9], [0, 0, 6, 10]], dtype=D)
    ]
    target = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [40, 40, 70, 70]], dtype=D),
        "labels": torch.tensor([2, 1]),
    }
    props, matched, labels, reg = rh.select_training_samples(proposals, [target])
    # proposals + GT: IoUs with GT 0 are 1, 0, 0.64, 0.6; with GT 1: 0, 0.11, 0, 0 -> labels
    # 2, 0, 2, 2 and the GT boxes themselves 2, 1
    assert labels[0].tolist() == [2, 0, 2, 2, 2, 1]
    assert matched[0].tolist() == [0, 0, 0, 0, 0, 1]
    torch.testing.assert_close(props[0][4:], target["boxes"])
    torch.testing.assert_close(reg[4:], torch.zeros(2, 4, dtype=D))  # a GT box regresses to 0
    assert reg.shape == (6, 4)


def test_sampling_keeps_at_most_the_budget():
    rh = heads(box_batch_size_per_image=4, box_positive_fraction=0.25)
    rh.fg_bg_sampler.deterministic = True
    proposals = [torch.tensor([[0.0, 0, 10, 10]] * 3 + [[50.0, 50, 60, 60]] * 5, dtype=D)]
    target = {"boxes": torch.tensor([[0.0, 0, 10, 10]], dtype=D), "labels": torch.tensor([1])}
    props, _, labels, _ = rh.select_training_samples(proposals, [target])
    # int(4 * 0.25) = 1 positive (the first), then 3 negatives (the first ones)
    assert labels[0].tolist() == [1, 0, 0, 0] and len(props[0]) == 4


def test_postprocess_detections_by_hand():
    rh = heads(box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=3)
    proposals = [torch.tensor([[10.0, 10, 30, 30], [12.0, 10, 32, 30]], dtype=D)]
    logits = torch.tensor([[0.0, 3.0, 1.0], [0.0, 1.5, -5.0]], dtype=D)
    deltas = torch.zeros(2, 12, dtype=D)
    deltas[0, 8] = 10.0 * 0.5  # class 2 of proposal 0: shifted right by half its width (/ wx)
    boxes, scores, labels = rh.postprocess_detections(logits, deltas, proposals, [(40, 40)])
    p = torch.softmax(logits, 1)
    # class 1: proposal 0 (0.84) suppresses proposal 1 (0.82; IoU 0.82 > 0.5); class 2:
    # proposal 0's shifted box (0.11) is kept, proposal 1's scores below 0.05
    want = sorted(
        [(p[0, 1].item(), 1, [10.0, 10, 30, 30]), (p[0, 2].item(), 2, [20.0, 10, 40, 30])],
        reverse=True,
    )
    assert p[1, 1] < p[0, 1] and p[1, 2] < 0.05
    assert labels[0].tolist() == [w[1] for w in want]
    torch.testing.assert_close(scores[0], torch.tensor([w[0] for w in want], dtype=D))
    torch.testing.assert_close(boxes[0], torch.tensor([w[2] for w in want], dtype=D))
    assert math.isclose(boxes[0][labels[0] == 2][0, 2].item(), 40.0)  # clipped to the image


def test_postprocess_caps_detections():
    rh = heads(box_score_thresh=0.0, box_detections_per_img=2)
    proposals = [torch.tensor([[10.0 * i, 0, 10 * i + 8, 8] for i in range(4)], dtype=D)]
    boxes, scores, _ = rh.postprocess_detections(
        torch.zeros(4, 3, dtype=D), torch.zeros(4, 12, dtype=D), proposals, [(50, 50)]
    )
    assert len(boxes[0]) == 2 and torch.all(scores[0] == 1 / 3)
