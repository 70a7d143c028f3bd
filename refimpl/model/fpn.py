"""The Feature Pyramid Network (Lin et al. 2017, sec. 3) on top of the backbone.

FPN builds, from the backbone's C2..C5, a pyramid P2..P5 with the same number of channels at
every level: a 1x1 lateral convolution of each C_i, plus the coarser level upsampled 2x
(nearest neighbour), then a 3x3 convolution "to reduce the aliasing effect of upsampling".
P6 is a stride-2 subsampling of P5, used only by the RPN for the largest anchors (FPN sec.
4.1). Strides: 4, 8, 16, 32, 64. Mask R-CNN (sec. 3, "Network Architecture") uses this
ResNet-FPN backbone for both the RPN and the RoI heads.

Module names follow torchvision (``inner_blocks.i.0``, ``layer_blocks.i.0``,
``body``/``fpn``), so that its state dicts load key for key.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import freeze_layers, norm_layer_for, resnet50, resnet_small

BACKBONES = ("resnet50", "resnet18", "small")


class FeaturePyramidNetwork(nn.Module):
    """``[C2..C5] -> {"p2": P2, ..., "p5": P5, "p6": P6}``, all ``out_channels`` wide.

    Args:
        in_channels_list: channels of C2..C5 (e.g. 256, 512, 1024, 2048 for ResNet-50).
        out_channels: channels of every pyramid level (256 in the paper).
        extra_p6: append P6 = ``max_pool2d(P5, kernel 1, stride 2)`` (FPN sec. 4.1).
    """

    def __init__(self, in_channels_list: Sequence[int], out_channels: int, extra_p6: bool = True):
        super().__init__()
        # Each conv sits in an nn.Sequential of one: torchvision's key layout (".i.0.weight").
        self.inner_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, out_channels, 1)) for c in in_channels_list
        )
        self.layer_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1))
            for _ in in_channels_list
        )
        self.extra_p6 = extra_p6
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[Tensor]) -> OrderedDict[str, Tensor]:
        # Top-down pathway: start from the coarsest level, add each lateral connection.
        last_inner = self.inner_blocks[-1](features[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[idx](features[idx])
            # upsample to the lateral's exact size (odd sizes do not double exactly)
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, self.layer_blocks[idx](last_inner))
        if self.extra_p6:
            # kernel 1, stride 2: a plain subsampling, as in the FPN paper's P6.
            results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))
        # named by level: P_k has stride 2**k
        return OrderedDict((f"p{k + 2}", p) for k, p in enumerate(results))


class BackboneWithFPN(nn.Module):
    """A backbone ``body`` (returning ``[C2..C5]``) followed by an FPN ``fpn``.

    ``forward(images) -> {"p2": P2, ..., "p6": P6}``; ``out_channels`` is the pyramid's width.
    """

    def __init__(self, body: nn.Module, in_channels_list: Sequence[int], out_channels: int):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(x))


def resnet_fpn_backbone(
    name: str = "resnet50",
    *,
    width: int = 32,
    fpn_channels: int = 256,
    norm: str = "bn",
    bn_eps: float | None = None,
    trainable_layers: int = 5,
) -> BackboneWithFPN:
    """A ResNet with an FPN on top (torchvision's ``resnet_fpn_backbone``), without weights.

    Args:
        name: ``"resnet50"`` (the paper's), ``"resnet18"``, or ``"small"`` (ResNet-18's layout
            at ``width`` channels in the stem: 32 is half of ResNet-18).
        width: the stem width of ``"small"``.
        fpn_channels: the pyramid's width (256).
        norm: ``"bn"`` (BatchNorm2d, training from scratch) | ``"frozen"``
            (FrozenBatchNorm2d, fine-tuning pretrained weights).
        bn_eps: BatchNorm's epsilon (None: 1e-5; torchvision's COCO weights use 0.0).
        trainable_layers: 0..5, see :func:`~refimpl.model.backbone.freeze_layers`.
    """
    norm_layer = norm_layer_for(norm, bn_eps)
    if name == "resnet50":
        body = resnet50(norm_layer)
    elif name == "resnet18":
        body = resnet_small(64, norm_layer=norm_layer)
    elif name == "small":
        body = resnet_small(width, norm_layer=norm_layer)
    else:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    freeze_layers(body, trainable_layers)
    return BackboneWithFPN(body, body.out_channels, fpn_channels)
