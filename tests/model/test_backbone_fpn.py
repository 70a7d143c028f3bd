"""The ResNet body (C2..C5), FrozenBatchNorm2d and the FPN (P2..P6)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from refimpl.model.backbone import (
    FrozenBatchNorm2d,
    freeze_layers,
    norm_layer_for,
    resnet50,
    resnet_small,
)
from refimpl.model.fpn import BackboneWithFPN, FeaturePyramidNetwork


def test_resnet50_stages_channels_and_strides():
    body = resnet50().eval()
    with torch.no_grad():
        c = body(torch.rand(1, 3, 64, 96))
    assert [t.shape[1] for t in c] == [256, 512, 1024, 2048] == body.out_channels
    assert [tuple(t.shape[-2:]) for t in c] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    # ResNet v1.5 (torchvision): the stride is in the bottleneck's 3x3 convolution
    assert body.layer2[0].conv1.stride == (1, 1) and body.layer2[0].conv2.stride == (2, 2)
    assert sum(p.numel() for p in body.parameters()) == 23_508_032  # ResNet-50 without fc


def test_small_resnet_widths():
    body = resnet_small(width=8)
    c = body(torch.rand(2, 3, 32, 32))
    assert [t.shape[1] for t in c] == [8, 16, 32, 64] == body.out_channels
    assert [t.shape[-1] for t in c] == [8, 4, 2, 1]
    assert len(body.layer1) == 2 and body.layer1[0].downsample is None


def test_frozen_batchnorm_equals_batchnorm_in_eval():
    bn = nn.BatchNorm2d(5, eps=1e-3).double().eval()
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    frozen = FrozenBatchNorm2d(5, eps=1e-3).double()
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped
    assert not list(frozen.parameters())  # buffers only: nothing to train
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-12, atol=1e-12)
    assert isinstance(norm_layer_for("frozen", 0.0)(3), FrozenBatchNorm2d)
    assert norm_layer_for("frozen", 0.0)(3).eps == 0.0
    assert isinstance(norm_layer_for("bn")(3), nn.BatchNorm2d)
    with pytest.raises(ValueError):
        norm_layer_for("group")


def test_freeze_layers():
    body = resnet_small(width=4)
    freeze_layers(body, 3)  # layer2..layer4 train; stem and layer1 frozen
    frozen = {n.split(".")[0] for n, p in body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1"}
    freeze_layers(body, 5)
    assert all(p.requires_grad for p in body.parameters())
    with pytest.raises(ValueError):
        freeze_layers(body, 6)


def test_fpn_top_down_by_hand():
    # identity lateral and output convolutions: P5 = C5, P4 = C4 + up(P5), ..., P6 = P5[::2, ::2]
    fpn = FeaturePyramidNetwork([2, 2, 2], 2)
    with torch.no_grad():
        for block in fpn.inner_blocks:
            block[0].weight.copy_(torch.eye(2)[:, :, None, None])
            block[0].bias.zero_()
        for block in fpn.layer_blocks:
            block[0].weight.zero_()
            block[0].weight[:, :, 1, 1] = torch.eye(2)
            block[0].bias.zero_()
    c = [torch.randn(1, 2, 8, 8), torch.randn(1, 2, 4, 4), torch.randn(1, 2, 3, 3)]
    p = fpn(c)
    assert list(p) == ["p2", "p3", "p4", "p5"]  # the input's levels C2.. give P2..
    up = torch.nn.functional.interpolate
    p5 = c[2]
    p4 = c[1] + up(p5, size=(4, 4), mode="nearest")  # odd sizes: to the lateral's exact size
    p3 = c[0] + up(p4, size=(8, 8), mode="nearest")
    for got, want in zip(p.values(), [p3, p4, p5, p5[..., ::2, ::2]], strict=True):
        torch.testing.assert_close(got, want)


def test_backbone_with_fpn_levels_and_strides():
    bb = BackboneWithFPN(resnet_small(width=8), [8, 16, 32, 64], 16)
    p = bb(torch.rand(1, 3, 64, 64))
    assert list(p) == ["p2", "p3", "p4", "p5", "p6"]
    assert [t.shape[1] for t in p.values()] == [16] * 5 and bb.out_channels == 16
    assert [64 // t.shape[-1] for t in p.values()] == [4, 8, 16, 32, 64]
