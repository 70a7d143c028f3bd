"""The RPN: head layout, flattening order (= the anchors' order), proposal filtering, anchor
labels."""

from __future__ import annotations

import torch

from refimpl.model.anchors import AnchorGenerator
from refimpl.model.boxes import clip_boxes_to_image, remove_small_boxes
from refimpl.model.rpn import RegionProposalNetwork, RPNHead, flatten_predictions


def make_rpn(pre=1000, post=1000, nms=0.7, score=0.0, sizes=(8, 16)):
    gen = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * len(sizes))
    return RegionProposalNetwork(
        gen,
        RPNHead(4, 3),
        0.7,
        0.3,
        16,
        0.5,
        {"training": pre, "testing": pre},
        {"training": post, "testing": post},
        nms,
        score,
    )


def test_head_init_and_shapes():
    head = RPNHead(8, 3)
    assert head.cls_logits.weight.std().item() < 0.02 and head.bbox_pred.bias.abs().max() == 0
    logits, deltas = head([torch.rand(2, 8, 5, 6), torch.rand(2, 8, 3, 3)])
    assert [t.shape for t in logits] == [(2, 3, 5, 6), (2, 3, 3, 3)]
    assert [t.shape for t in deltas] == [(2, 12, 5, 6), (2, 12, 3, 3)]


def test_flatten_order_is_level_y_x_anchor():
    # encode (level, y, x, anchor) in the values and check the flattened order
    logits, deltas, want = [], [], []
    for lvl, (h, w) in enumerate([(2, 3), (1, 2)]):
        lg = torch.zeros(1, 3, h, w)
        dl = torch.zeros(1, 12, h, w)
        for a in range(3):
            for y in range(h):
                for x in range(w):
                    code = lvl * 1000 + y * 100 + x * 10 + a
                    lg[0, a, y, x] = code
                    dl[0, 4 * a : 4 * a + 4, y, x] = torch.tensor(
                        [code, code + 0.1, code + 0.2, code + 0.3]
                    )
        logits.append(lg)
        deltas.append(dl)
        want += [
            lvl * 1000 + y * 100 + x * 10 + a for y in range(h) for x in range(w) for a in range(3)
        ]
    flat_logits, flat_deltas, counts = flatten_predictions(logits, deltas)
    assert counts == [18, 6]
    assert flat_logits[0].tolist() == want
    torch.testing.assert_close(flat_deltas[0, :, 0], torch.tensor(want, dtype=torch.float32))
    torch.testing.assert_close(
        flat_deltas[0, :, 3] - flat_deltas[0, :, 0], torch.full((24,), 0.3), atol=1e-4, rtol=0
    )


def test_clip_and_remove_small():
    boxes = torch.tensor([[-5.0, -1.0, 50.0, 20.0], [3.0, 4.0, 3.0005, 9.0], [1.0, 1.0, 2.0, 2.0]])
    clipped = clip_boxes_to_image(boxes, (10, 40))  # (H, W)
    torch.testing.assert_close(clipped[0], torch.tensor([0.0, 0.0, 40.0, 10.0]))
    assert remove_small_boxes(clipped, 1e-3).tolist() == [0, 2]


def test_filter_proposals_per_level_top_n_and_per_image_post_n():
    rpn = make_rpn(pre=2, post=3, nms=0.99).eval()
    # image 0: level 0 has 4 anchors, level 1 has 2; all boxes disjoint (no NMS effect)
    boxes = torch.tensor([[[10.0 * i, 0, 10 * i + 5, 5] for i in range(6)]] * 2)
    objectness = torch.tensor([[0.1, 3.0, 2.0, -1.0, 0.5, 5.0], [0.0, 0.0, 0.0, 0.0, -9, -8]])
    out_boxes, out_scores = rpn.filter_proposals(boxes, objectness, [(100, 100)] * 2, [4, 2])
    # top 2 per level: {1, 2} and {5, 4}; then the best 3 of the image by score, after NMS
    torch.testing.assert_close(out_scores[0], torch.sigmoid(torch.tensor([5.0, 3.0, 2.0])))
    torch.testing.assert_close(out_boxes[0][:, 0], torch.tensor([50.0, 10.0, 20.0]))
    assert len(out_boxes[1]) == 3  # top-2 per level = 4 candidates, 3 kept


def test_filter_proposals_nms_per_level_and_score_thresh():
    rpn = make_rpn(nms=0.5, score=0.3).eval()
    same = [0.0, 0.0, 10.0, 10.0]
    boxes = torch.tensor([[same, same, same, [0.0, 0.0, 10.0, 9.0]]])
    objectness = torch.tensor([[2.0, 1.0, -3.0, 1.5]])  # sigmoid(-3) < 0.3: dropped
    out_boxes, out_scores = rpn.filter_proposals(boxes, objectness, [(20, 20)], [2, 2])
    # level 0: box 1 is suppressed by box 0; level 1: box 3 is not suppressed by level 0's
    torch.testing.assert_close(out_scores[0], torch.sigmoid(torch.tensor([2.0, 1.5])))
    torch.testing.assert_close(out_boxes[0], boxes[0, [0, 3]])


def test_assign_targets_to_anchors():
    rpn = make_rpn()
    anchors = torch.tensor(
        [[0.0, 0, 10, 10], [0, 0, 10, 12], [0, 0, 20, 20], [50, 50, 60, 60], [30, 30, 37, 37]]
    )
    gt = {"boxes": torch.tensor([[0.0, 0, 10, 10], [30, 30, 40, 40]])}
    labels, matched = rpn.assign_targets_to_anchors(anchors, [gt])
    # IoU with GT 0: 1, 0.83, 0.25, 0, 0 -> 1, 1, 0 ...; GT 1's best anchor (IoU 0.49) is
    # matched as a low-quality match
    assert labels[0].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    torch.testing.assert_close(matched[0][4], gt["boxes"][1])
    labels, _ = rpn.assign_targets_to_anchors(anchors, [{"boxes": torch.zeros(0, 4)}])
    assert labels[0].tolist() == [0.0] * 5  # no objects: all background
