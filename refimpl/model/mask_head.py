"""The mask head (Mask R-CNN sec. 3, Figure 4 right): a small FCN on each positive RoI.

14x14 RoIAlign features -> four 3x3 convolutions (256 channels, ReLU) -> a 2x2 stride-2
deconvolution (ReLU) to 28x28 -> a 1x1 convolution with one output per class: ``K`` binary
masks, of which only the (GT or predicted) class's is used. Keeping the spatial layout (no fc
layers) is what lets the mask stay pixel-aligned with the RoI (sec. 3, "Mask
Representation").

Inference (sec. 3.1): the mask of each detection is the sigmoid of its predicted class's
channel (``"sigmoid"``), the softmax probability of that class (``"softmax"``) or the sigmoid
of the single channel (``"agnostic"``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .losses import MASK_LOSSES


class MaskRCNNHeads(nn.Sequential):
    """``len(layers)`` 3x3 conv + ReLU blocks (torchvision's keys ``i.0.weight``).

    He (fan-out) initialization, zero biases, as torchvision.
    """

    def __init__(self, in_channels: int, layers: Sequence[int] = (256,) * 4, dilation: int = 1):
        blocks = []
        for width in layers:
            conv = nn.Conv2d(in_channels, width, 3, padding=dilation, dilation=dilation)
            blocks.append(nn.Sequential(conv, nn.ReLU(inplace=True)))
            in_channels = width
        super().__init__(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class MaskRCNNPredictor(nn.Sequential):
    """``conv5_mask`` (2x2 deconvolution, stride 2) + ReLU, then ``mask_fcn_logits`` (1x1
    conv to ``num_classes`` channels, or 1 for class-agnostic masks)."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int):
        super().__init__(
            OrderedDict(
                [
                    ("conv5_mask", nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2, 0)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("mask_fcn_logits", nn.Conv2d(dim_reduced, num_classes, 1, 1, 0)),
                ]
            )
        )
        # torchvision re-initializes the weights only (biases keep PyTorch's default init)
        for name, p in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(p, mode="fan_out", nonlinearity="relu")


def maskrcnn_inference(
    mask_logits: Tensor, labels: Sequence[Tensor], mode: str = "sigmoid"
) -> list[Tensor]:
    """Mask probabilities ``[D_i, 1, M, M]`` per image, for the predicted ``labels``."""
    if mode not in MASK_LOSSES:
        raise ValueError(f"mode must be one of {MASK_LOSSES}, got {mode!r}")
    all_labels = torch.cat(list(labels))
    index = torch.arange(mask_logits.shape[0], device=mask_logits.device)
    if mode == "sigmoid":
        probs = mask_logits.sigmoid()[index, all_labels]
    elif mode == "softmax":
        probs = mask_logits.softmax(dim=1)[index, all_labels]
    else:
        probs = mask_logits[:, 0].sigmoid()
    return list(probs[:, None].split([len(lab) for lab in labels], dim=0))
