"""The backbone: a ResNet (He et al. 2016) that returns the stage outputs C2..C5.

Mask R-CNN (sec. 3, "Network Architecture") uses a ResNet-FPN backbone: the outputs of the
four residual stages C2, C3, C4, C5 (strides 4, 8, 16, 32) feed the feature pyramid
(:mod:`refimpl.model.fpn`). The layout (module names ``conv1, bn1, layer1..layer4``, blocks
``conv1/bn1/conv2/bn2[/conv3/bn3]/downsample.{0,1}``) is torchvision's, so a torchvision
ResNet state dict loads key for key. As in torchvision ("ResNet v1.5"), a bottleneck block
strides in its 3x3 convolution, not in its first 1x1.

``resnet50`` is the paper's backbone; ``resnet_small`` is a ResNet-18-like network with
configurable widths for CPU training on small images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (all buffers, no parameters).

    Detection models fine-tuned from ImageNet weights freeze BatchNorm, because a detection
    batch (1-2 large images per GPU) is too small to estimate statistics (Mask R-CNN sec. 3.1,
    "Implementation Details"; torchvision does the same whenever it loads pretrained weights).
    The buffers are named like ``nn.BatchNorm2d``'s; ``num_batches_tracked`` is dropped on
    load, so a state dict of either kind loads. Computed in torchvision's order
    (``x * scale + shift``), so that outputs match it bit for bit.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = (
            self.weight.reshape(1, -1, 1, 1)
            * (self.running_var.reshape(1, -1, 1, 1) + self.eps).rsqrt()
        )
        shift = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
        return x * scale + shift

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def norm_layer_for(norm: str, eps: float | None = None) -> NormLayer:
    """``"bn"``: ordinary ``nn.BatchNorm2d`` (training from scratch, the spec's default);
    ``"frozen"``: :class:`FrozenBatchNorm2d` (loading pretrained weights)."""
    if norm == "bn":
        return nn.BatchNorm2d if eps is None else (lambda c: nn.BatchNorm2d(c, eps=eps))
    if norm == "frozen":
        return FrozenBatchNorm2d if eps is None else (lambda c: FrozenBatchNorm2d(c, eps=eps))
    raise ValueError(f"norm must be 'bn' or 'frozen', got {norm!r}")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and an identity (or 1x1 projection) shortcut: ResNet-18/34."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, norm_layer: NormLayer):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = norm_layer(width)
        self.conv2 = _conv3x3(width, cout)
        self.bn2 = norm_layer(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, cout, stride, norm_layer)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), plus the shortcut: ResNet-50/101."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, norm_layer: NormLayer):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv1x1(cin, width)
        self.bn1 = norm_layer(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = norm_layer(width)
        self.conv3 = _conv1x1(width, cout)
        self.bn3 = norm_layer(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, cout, stride, norm_layer)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(cin: int, cout: int, stride: int, norm_layer: NormLayer) -> nn.Module | None:
    # A projection only where the shape changes (ResNet's option B).
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv1x1(cin, cout, stride), norm_layer(cout))


class ResNet(nn.Module):
    """ResNet body without the classifier: ``forward(x)`` returns ``[C2, C3, C4, C5]``.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        widths: the stages' inner widths (outputs are ``width * block.expansion``).
        stem_width: channels of the 7x7 stride-2 stem convolution.
        norm_layer: ``nn.BatchNorm2d`` (default) or :class:`FrozenBatchNorm2d`.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_width: int = 64,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ):
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError("a ResNet has 4 stages: give 4 block counts and 4 widths")
        self.conv1 = nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = stem_width
        self.out_channels: list[int] = []
        for i, (n, width) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if i == 0 else 2  # the stem already has stride 4
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width, stride if j == 0 else 1, norm_layer))
                cin = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.out_channels.append(cin)
        # torchvision's initialization (He et al. 2015 for convolutions; BN as the identity).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


def resnet50(norm_layer: NormLayer = nn.BatchNorm2d) -> ResNet:
    """ResNet-50: bottleneck blocks (3, 4, 6, 3); C2..C5 have 256, 512, 1024, 2048 channels."""
    return ResNet(Bottleneck, (3, 4, 6, 3), norm_layer=norm_layer)


def resnet_small(
    width: int = 32, layers: Sequence[int] = (2, 2, 2, 2), norm_layer: NormLayer = nn.BatchNorm2d
) -> ResNet:
    """ResNet-18's layout at a configurable width (``width=32``: half of ResNet-18, whose
    stages are 64, 128, 256, 512 wide), for CPU training on small images."""
    widths = tuple(width * 2**i for i in range(4))
    return ResNet(BasicBlock, layers, widths=widths, stem_width=width, norm_layer=norm_layer)


def freeze_layers(body: ResNet, trainable_layers: int) -> None:
    """Freeze all but the last ``trainable_layers`` of ``layer4, layer3, layer2, layer1, conv1``
    (torchvision's ``trainable_backbone_layers``; 5 trains everything, the stem BN included).
    Only sensible when fine-tuning pretrained weights: early features are generic."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in [0, 5], got {trainable_layers}")
    trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        trainable.append("bn1")
    for name, p in body.named_parameters():
        p.requires_grad_(any(name.startswith(t) for t in trainable))
