"""Finite-difference gradient checks (float64) through the differentiable path of the model.

``gradcheck(fast_mode=True)`` compares ``v^T J u`` for random ``u, v`` with finite differences
along ``u``: one pair of evaluations per input tensor instead of per element, which is what
keeps these checks to seconds; the full-Jacobian check runs on the smallest case.

1. The box and mask heads and their losses, with respect to the FPN features, for fixed
   proposals and targets (every RoI operator and mask loss).
2. A tiny end-to-end model, with respect to parameters all along the path (backbone BatchNorm,
   FPN, RPN head, box head, mask head), losses summed.

What is not differentiable is held fixed, as in training: the proposals are detached (Faster
R-CNN's approximate joint training), so (2) zeroes the RPN's regression weights, making the
proposals independent of the parameters, and disables NMS (threshold 1) and uses every RoI, so
that no discrete choice depends on a score order. Boxes are fractional, so no RoIAlign sample
lands on the pixel lattice (its kinks).
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

from refimpl.model import LOSS_NAMES

from .conftest import synthetic_batch, tiny_model

D = torch.float64


@pytest.mark.parametrize(
    ("roi_op", "mask_loss"),
    [("align", "sigmoid"), ("align", "softmax"), ("warp", "agnostic"), ("pool", "sigmoid")],
)
def test_heads_and_losses_wrt_features(roi_op, mask_loss):
    model = tiny_model(roi_op=roi_op, mask_loss=mask_loss, box_batch_size_per_image=16).double()
    heads = model.roi_heads.train()
    heads.fg_bg_sampler.deterministic = True
    g = torch.Generator().manual_seed(1)
    # a padded 64 x 64 batch of 2 images: P2..P5 (P6 is not pooled from)
    feats = [torch.randn(2, 2, 64 // 2**k, 64 // 2**k, generator=g, dtype=D) for k in (2, 3, 4, 5)]
    p6 = torch.randn(2, 2, 1, 1, generator=g, dtype=D)
    xy = torch.rand(2, 6, 2, generator=g, dtype=D) * 40 + 0.37
    wh = torch.rand(2, 6, 2, generator=g, dtype=D) * 30 + 4.13
    proposals = list(torch.cat([xy, (xy + wh).clamp(max=63.7)], dim=2))
    _, targets = synthetic_batch(64, 2, dtype=D, seed=2)

    def losses(*features):
        pyramid = {**dict(zip(("p2", "p3", "p4", "p5"), features, strict=True)), "p6": p6}
        _, out = heads(pyramid, proposals, (64, 64), [(64, 64)] * 2, targets)
        return out["loss_classifier"], out["loss_box_reg"], out["loss_mask"]

    values = losses(*feats)
    assert all(v.item() > 0 for v in values)  # every loss has positive RoIs to work on
    inputs = [f.requires_grad_() for f in feats]
    assert gradcheck(losses, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_tiny_model_end_to_end_wrt_parameters():
    model = (
        tiny_model(
            rpn_nms_thresh=1.0,  # no NMS: no discrete choice by score order
            rpn_pre_nms_top_n_train=10_000,
            rpn_post_nms_top_n_train=10_000,
            box_batch_size_per_image=10_000,  # every RoI is used
            box_positive_fraction=1.0,
            rpn_batch_size_per_image=64,
            aspect_ratios=(1.0,),  # fewer anchors, hence RoIs: a faster check
        )
        .double()
        .train()
    )
    model.set_sampling(deterministic=True)
    with torch.no_grad():
        model.rpn.head.bbox_pred.weight.zero_()  # proposals independent of the parameters
        model.rpn.head.bbox_pred.bias.uniform_(-0.2, 0.2)
    images, targets = synthetic_batch(64, 2, dtype=D, seed=3)
    names = [
        "backbone.body.bn1.weight",
        "backbone.body.layer4.1.bn2.bias",
        "backbone.fpn.inner_blocks.0.0.bias",
        "backbone.fpn.layer_blocks.2.0.bias",
        "rpn.head.conv.0.0.bias",
        "rpn.head.cls_logits.bias",
        "roi_heads.box_head.fc7.bias",
        "roi_heads.box_predictor.bbox_pred.bias",
        "roi_heads.mask_head.0.0.bias",
        "roi_heads.mask_predictor.conv5_mask.bias",
    ]
    params = dict(model.named_parameters())

    def total(*values):
        out = functional_call(model, dict(zip(names, values, strict=True)), (images, targets))
        assert tuple(out) == LOSS_NAMES
        return sum(out.values())

    inputs = [params[n].detach().clone().requires_grad_() for n in names]
    assert gradcheck(total, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_heads_full_jacobian_small_case():
    model = tiny_model(box_batch_size_per_image=8).double()
    heads = model.roi_heads.train()
    heads.fg_bg_sampler.deterministic = True
    g = torch.Generator().manual_seed(4)
    # one 32 x 32 image: P2..P5 are 8x8, 4x4, 2x2, 1x1 (2 channels): 170 inputs
    feats = [torch.randn(1, 2, 32 // s, 32 // s, generator=g, dtype=D) for s in (4, 8, 16, 32)]
    p6 = torch.randn(1, 2, 1, 1, generator=g, dtype=D)
    proposals = [torch.tensor([[1.3, 2.6, 20.2, 17.9], [8.1, 5.3, 30.6, 29.4]], dtype=D)]
    targets = [
        {
            "boxes": torch.tensor([[2.2, 3.1, 18.7, 19.4], [15.3, 12.6, 31.2, 30.1]], dtype=D),
            "labels": torch.tensor([2, 1]),
            "masks": torch.zeros(2, 32, 32, dtype=torch.uint8),
        }
    ]
    targets[0]["masks"][0, 4:18, 3:17] = 1
    targets[0]["masks"][1, 14:29, 17:30] = 1

    def loss(*features):
        pyramid = {**dict(zip(("p2", "p3", "p4", "p5"), features, strict=True)), "p6": p6}
        _, out = heads(pyramid, proposals, (32, 32), [(32, 32)], targets)
        return out["loss_classifier"] + out["loss_box_reg"] + out["loss_mask"]

    inputs = [f.requires_grad_() for f in feats]
    assert gradcheck(loss, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)
