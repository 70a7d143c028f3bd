"""``nn.Module`` wrappers of the RoI operators, with torchvision's constructors.

``RoIAlign``, ``RoIPool``, ``RoIWarp`` and ``PrRoIPool`` hold an operator's parameters;
``MultiScaleRoIAlign`` pools each RoI from the feature-pyramid level that suits its size (FPN,
Lin et al. 2017, eq. 1), as the Mask R-CNN heads do (Mask R-CNN sec. 3, "Network
Architecture").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .torch_ops import convert_boxes_to_roi_format, prroi_pool, roi_align, roi_pool, roi_warp

__all__ = [
    "LevelMapper",
    "MultiScaleRoIAlign",
    "PrRoIPool",
    "RoIAlign",
    "RoIPool",
    "RoIWarp",
    "infer_scale",
]


def _pair(output_size) -> tuple[int, int]:
    if isinstance(output_size, int):
        return (output_size, output_size)
    return tuple(output_size)


class RoIAlign(nn.Module):
    """See :func:`refimpl.ops.torch_ops.roi_align` (Mask R-CNN sec. 3)."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = False,
        pool_mode: str = "avg",
    ):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.pool_mode = pool_mode

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_align(
            input,
            rois,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
            self.pool_mode,
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, "
            f"pool_mode={self.pool_mode!r}"
        )


class RoIPool(nn.Module):
    """See :func:`refimpl.ops.torch_ops.roi_pool` (Fast R-CNN sec. 2.1)."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class RoIWarp(nn.Module):
    """See :func:`refimpl.ops.torch_ops.roi_warp` (Mask R-CNN Table 2c)."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int = -1,
        pool_mode: str = "max",
    ):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.pool_mode = pool_mode

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_warp(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.pool_mode
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, pool_mode={self.pool_mode!r}"
        )


class PrRoIPool(nn.Module):
    """See :func:`refimpl.ops.torch_ops.prroi_pool` (IoU-Net sec. 3.3); differentiable with
    respect to the boxes too."""

    def __init__(
        self, output_size: int | tuple[int, int], spatial_scale: float, aligned: bool = False
    ):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return prroi_pool(input, rois, self.output_size, self.spatial_scale, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"aligned={self.aligned}"
        )


# --- the feature pyramid: which level pools which RoI -----------------------------------------


def infer_scale(feature_size: Sequence[int], image_size: Sequence[int]) -> float:
    """The level's ``spatial_scale``: ``feature / image`` rounded to a power of two in log
    space, as torchvision does (a 800x1199 image padded to 800x1216 has a 25x38 P5: the ratios
    1/32 and 1/31.6 both give 1/32). The height decides, as in torchvision."""
    return 2.0 ** round(math.log2(float(feature_size[0]) / float(image_size[0])))


class LevelMapper:
    """FPN eq. 1: a ``w x h`` RoI goes to level ``k = floor(k0 + log2(sqrt(w h) / 224))``,
    clamped to ``[k_min, k_max]``; returns ``k - k_min``, an index into the pooled levels.

    ``k0 = canonical_level`` (4: an ImageNet-sized 224x224 RoI is pooled from P4, the level
    whose stride C4-based Faster R-CNN used) and ``224 = canonical_scale``; a small-image
    dataset may lower the scale to spread its RoIs over the levels. ``eps`` keeps a RoI of
    exactly ``224 * 2**j`` on level ``k0 + j`` despite rounding in log2 (torchvision's 1e-6).
    """

    def __init__(
        self,
        k_min: int,
        k_max: int,
        canonical_scale: float = 224,
        canonical_level: int = 4,
        eps: float = 1e-6,
    ):
        self.k_min = k_min
        self.k_max = k_max
        self.s0 = canonical_scale
        self.lvl0 = canonical_level
        self.eps = eps

    def __call__(self, boxlists: Sequence[Tensor]) -> Tensor:
        boxes = torch.cat(list(boxlists))
        # float16 areas overflow above 65504 (a 256x256 box): compute in at least float32.
        boxes = boxes.to(torch.promote_types(boxes.dtype, torch.float32))
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        s = torch.sqrt(area)
        levels = torch.floor(self.lvl0 + torch.log2(s / self.s0) + self.eps)
        # An inverted box has a negative area, so NaN here; torchvision's int cast of NaN is
        # undefined (the RoI then silently pools to zeros). Send it to the finest level.
        levels = torch.nan_to_num(levels, nan=float(self.k_min))
        levels = torch.clamp(levels, min=self.k_min, max=self.k_max)
        return levels.to(torch.int64) - self.k_min


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign over a feature pyramid (Mask R-CNN sec. 3 with FPN; torchvision-compatible).

    Each RoI is pooled from one level, chosen by its size (FPN eq. 1, :class:`LevelMapper`);
    each level's ``spatial_scale`` is inferred from its size relative to the (padded) image
    size, as a power of two (:func:`infer_scale`).

    Args:
        featmap_names: the keys of the feature dict to pool from, finest first (a dict's own
            order decides, as in torchvision).
        output_size: ``(PH, PW)`` or an int.
        sampling_ratio: as :func:`roi_align` (torchvision's Mask R-CNN: 2).
        canonical_scale, canonical_level: FPN eq. 1's 224 and 4.
        aligned: as :func:`roi_align` (torchvision: False; detectron2: True).
        pool_mode: ``"avg"`` | ``"max"``; None: the operator's default (align: avg, warp: max).
        roi_op: ``"align"`` (the default), ``"warp"`` or ``"pool"``: the Mask R-CNN Table 2c
            ablation on a pyramid. ``pool`` ignores ``sampling_ratio``.

    ``forward(x, boxes, image_shapes)``: ``x`` a dict of ``[N, C, H_l, W_l]`` maps, ``boxes`` a
    list of ``Tensor[L_i, 4]`` per image in image coordinates, ``image_shapes`` the ``(h, w)``
    of each image before padding. Returns ``[sum L_i, C, PH, PW]``.

    Unlike torchvision's module, the scales are recomputed at every call (they are cheap),
    so a first batch of another size cannot leave stale scales behind; ``self.scales`` and
    ``self.map_levels`` hold those of the last call.
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int | tuple[int, int],
        sampling_ratio: int,
        *,
        canonical_scale: float = 224,
        canonical_level: int = 4,
        aligned: bool = False,
        pool_mode: str | None = None,
        roi_op: str = "align",
    ):
        super().__init__()
        if roi_op not in ("align", "warp", "pool"):
            raise ValueError(f"roi_op must be 'align', 'warp' or 'pool', got {roi_op!r}")
        if aligned and roi_op != "align":
            raise ValueError(f"aligned=True needs roi_op='align', got {roi_op!r}")
        if roi_op == "pool" and pool_mode not in (None, "max"):
            raise ValueError(f"roi_op='pool' always max-pools, got pool_mode={pool_mode!r}")
        self.featmap_names = featmap_names
        self.output_size = _pair(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = aligned
        self.pool_mode = pool_mode
        self.roi_op = roi_op
        self.scales: list[float] | None = None
        self.map_levels: LevelMapper | None = None

    def setup_scales(
        self, features: Sequence[Tensor], image_shapes: Sequence[tuple[int, int]]
    ) -> tuple[list[float], LevelMapper]:
        """Each level's scale, and the level mapper over the levels they span."""
        if len(image_shapes) == 0:
            raise ValueError("image_shapes must not be empty")
        # Images are padded to a common size before the backbone: the largest one.
        padded = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
        scales = [infer_scale(f.shape[-2:], padded) for f in features]
        # Each level halves the resolution: level k has scale 2**-k.
        k_min = round(-math.log2(scales[0]))
        k_max = round(-math.log2(scales[-1]))
        mapper = LevelMapper(k_min, k_max, self.canonical_scale, self.canonical_level)
        return scales, mapper

    def _pool(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        if self.roi_op == "pool":
            return roi_pool(feature, rois, self.output_size, scale)
        if self.roi_op == "warp":
            mode = self.pool_mode or "max"
            return roi_warp(feature, rois, self.output_size, scale, self.sampling_ratio, mode)
        mode = self.pool_mode or "avg"
        return roi_align(
            feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned, mode
        )

    def forward(
        self,
        x: Mapping[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> Tensor:
        features = [v for k, v in x.items() if k in self.featmap_names]
        if not features:
            raise ValueError(f"x has none of the feature maps {self.featmap_names}")
        self.scales, self.map_levels = self.setup_scales(features, image_shapes)
        rois = convert_boxes_to_roi_format(boxes).to(features[0].device)
        if len(features) == 1:
            return self._pool(features[0], rois, self.scales[0])

        levels = self.map_levels(boxes)
        first = features[0]
        result = first.new_zeros((rois.shape[0], first.shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            # Each RoI is pooled once, from its own level, and written back in input order.
            idx = torch.where(levels == level)[0]
            result[idx] = self._pool(feature, rois[idx], scale).to(result.dtype)
        return result

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}, roi_op={self.roi_op!r}"
        )
