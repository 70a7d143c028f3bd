"""Anchors: the reference boxes the RPN classifies and regresses (Faster R-CNN sec. 3.1.1).

At every position of a feature map, ``k`` anchors of different scales and aspect ratios are
centred; with FPN (Lin et al. 2017, sec. 4.1) each level has ONE scale (32, 64, 128, 256, 512
on P2..P6) and three aspect ratios, so ``k = 3`` per location.

Exactly torchvision's ``AnchorGenerator``: for a size ``s`` and ratio ``a = h / w``,
``h_ratio = sqrt(a)``, ``w_ratio = 1 / h_ratio``, and the base anchor
``round([-w_ratio s, -h_ratio s, w_ratio s, h_ratio s] / 2)`` (rounded to integers, computed in
float32); the anchor at feature cell ``(y, x)`` is the base anchor shifted by
``(x * stride, y * stride)`` (no half-pixel offset). Per level the order is
``(y, x, anchor)``, which is the order the RPN head's outputs are flattened in; levels are
concatenated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


def base_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """``[len(aspect_ratios) * len(sizes), 4]`` anchors centred on (0, 0), ratio-major order.

    Computed in float32 and rounded, as torchvision does, so that the values are the same
    whatever dtype the model runs in.
    """
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios  # so that w * h = s^2 for every ratio
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def grid_anchors(base: Tensor, grid_size: Sequence[int], stride: Sequence[int]) -> Tensor:
    """All anchors of one level: ``[H * W * A, 4]`` in (y, x, anchor) order.

    ``base``: ``[A, 4]`` from :func:`base_anchors`; ``grid_size``: ``(H, W)`` of the feature
    map; ``stride``: ``(stride_y, stride_x)`` in image pixels.
    """
    (h, w), (sy, sx) = grid_size, stride
    shifts_x = torch.arange(w, device=base.device) * sx
    shifts_y = torch.arange(h, device=base.device) * sy
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=1)
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)


def anchors_for_image(
    image_size: Sequence[int],
    feature_sizes: Sequence[Sequence[int]],
    sizes: Sequence[Sequence[float]],
    aspect_ratios: Sequence[Sequence[float]],
) -> Tensor:
    """Every level's anchors, concatenated finest first: ``[sum_l H_l W_l A_l, 4]`` float32.

    ``image_size``: the padded batch's ``(H, W)``; ``feature_sizes``: each level's ``(H_l,
    W_l)``; ``sizes``, ``aspect_ratios``: per level. The stride of level ``l`` is
    ``image_size // feature_size``: the padded batch is a multiple of the coarsest stride, so
    this is the exact stride. (Exercise 9's ``anchors_for_image``; the part
    :attr:`refimpl.model.parts.Parts.anchors`.)
    """
    anchors = []
    for (h, w), s, a in zip(feature_sizes, sizes, aspect_ratios, strict=True):
        stride = (image_size[0] // h, image_size[1] // w)
        anchors.append(grid_anchors(base_anchors(s, a), (h, w), stride))
    return torch.cat(anchors)


AnchorsFn = Callable[
    [Sequence[int], Sequence[Sequence[int]], Sequence[Sequence[float]], Sequence[Sequence[float]]],
    Tensor,
]


class AnchorGenerator(nn.Module):
    """Anchors for a list of feature maps, one ``(sizes, aspect_ratios)`` pair per level.

    Args:
        sizes: per level, the anchor sizes (sqrt of the area in pixels), e.g.
            ``((32,), (64,), (128,), (256,), (512,))``.
        aspect_ratios: per level, the ratios ``h / w``, e.g. ``((0.5, 1.0, 2.0),) * 5``.
        anchors_fn: computes them, with :func:`anchors_for_image`'s signature (the default):
            the part ``Parts.anchors``.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]] = ((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),) * 5,
        anchors_fn: AnchorsFn = anchors_for_image,
    ):
        super().__init__()
        if len(sizes) != len(aspect_ratios):
            raise ValueError("give one tuple of sizes and one of aspect ratios per level")
        self.sizes = tuple(tuple(s) for s in sizes)
        self.aspect_ratios = tuple(tuple(a) for a in aspect_ratios)
        self.anchors_fn = anchors_fn

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios, strict=True)]

    def forward(self, image_size: Sequence[int], feature_maps: Sequence[Tensor]) -> Tensor:
        """Anchors ``[sum_l H_l W_l A_l, 4]`` for a padded batch of size ``image_size`` (H, W),
        in the feature maps' dtype and on their device. The same anchors serve every image of
        the batch. They are computed in float32 (integers, exact in any float dtype)."""
        if len(feature_maps) != len(self.sizes):
            raise ValueError(
                f"{len(feature_maps)} feature maps but anchors for {len(self.sizes)} levels"
            )
        feature_sizes = [tuple(int(v) for v in f.shape[-2:]) for f in feature_maps]
        image_size = tuple(int(v) for v in image_size)
        anchors = self.anchors_fn(image_size, feature_sizes, self.sizes, self.aspect_ratios)
        return anchors.to(dtype=feature_maps[0].dtype, device=feature_maps[0].device)
