"""Pooling each RoI's features from the pyramid level that suits its size.

FPN (Lin et al. 2017, sec. 4.2, eq. 1) assigns a RoI of width ``w`` and height ``h`` (in image
pixels) to level::

    k = floor(k0 + log2(sqrt(w h) / 224))        (k0 = 4, clamped to P2..P5)

so that a 224x224 RoI (the ImageNet pre-training size) is pooled from P4 and a RoI half as
large from P3. ``canonical_scale`` (224) is a parameter: on small images it should shrink
with the image, or every RoI lands on P2. torchvision adds 1e-6 inside the floor, so that an
exact power of two is not pushed down a level by rounding (:class:`refimpl.ops.LevelMapper`).

The RoI operator itself is a choice (Mask R-CNN sec. 3, Table 2c): any callable with
``torchvision.ops.roi_align``'s signature ``(input, boxes, output_size, spatial_scale,
sampling_ratio, aligned)`` (e.g. a learner's operator, the part ``Parts.roi_align``), or by
name one of refimpl's: ``"align"`` (RoIAlign, the paper's), ``"warp"`` (RoIWarp: one
quantization) or ``"pool"`` (RoIPool: two quantizations), with ``pool_mode`` "avg" or "max"
for align and warp. Each level's ``spatial_scale`` is ``1 / stride``, a power of two inferred
from the feature size relative to the image size.

:class:`MultiLevelRoIPooler` is the model's pooler (detectron2's ``ROIPooler``; the name says
what it does: the operator is whichever it is given); :func:`fpn_roi_pooler` builds it over
P2..P5 with the model's options.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from refimpl.ops import LevelMapper, convert_boxes_to_roi_format, roi_align, roi_pool, roi_warp

ROI_OPS = ("align", "warp", "pool")
POOL_MODES = ("avg", "max")
# The pyramid levels the RoI heads pool from: P6 serves the RPN only (FPN sec. 4.2).
POOLED_LEVELS = ("p2", "p3", "p4", "p5")

RoIOp = Callable[..., Tensor]  # (input, boxes [K, 5], output_size, spatial_scale, ratio, aligned)
FpnLevelFn = Callable[[Tensor, int, int, float, int], Tensor]

__all__ = [
    "POOLED_LEVELS",
    "POOL_MODES",
    "ROI_OPS",
    "LevelMapper",
    "MultiLevelRoIPooler",
    "NamedRoIOp",
    "fpn_level",
    "fpn_roi_pooler",
]


def fpn_level(
    boxes: Tensor,
    k_min: int = 2,
    k_max: int = 5,
    canonical_scale: float = 224,
    canonical_level: int = 4,
) -> Tensor:
    """FPN eq. 1 for ``boxes [R, 4]``: ``[R]`` int64, the index ``k - k_min`` of each box's
    level (refimpl's :class:`~refimpl.ops.LevelMapper`; the part ``Parts.fpn_level``,
    exercise 11's ``fpn_level``)."""
    return LevelMapper(k_min, k_max, canonical_scale, canonical_level)([boxes])


class NamedRoIOp:
    """One of refimpl's RoI operators behind ``roi_align``'s signature, so that the pooler
    calls every operator the same way.

    Args:
        name: ``"align"`` | ``"warp"`` | ``"pool"``.
        pool_mode: ``"avg"`` | ``"max"`` (align, warp); None: the operator's default (align
            avg, warp max); RoIPool always max-pools.
    """

    def __init__(self, name: str, pool_mode: str | None = None):
        if name not in ROI_OPS:
            raise ValueError(f"roi_op must be a callable or one of {ROI_OPS}, got {name!r}")
        if pool_mode is not None and pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode must be one of {POOL_MODES}, got {pool_mode!r}")
        if name == "pool" and pool_mode not in (None, "max"):
            raise ValueError(f"roi_op='pool' always max-pools, got pool_mode={pool_mode!r}")
        self.name = name
        self.pool_mode = pool_mode or ("avg" if name == "align" else "max")

    def __call__(
        self,
        input: Tensor,
        boxes: Tensor,
        output_size: Sequence[int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool,
    ) -> Tensor:
        if self.name == "align":
            return roi_align(
                input, boxes, output_size, spatial_scale, sampling_ratio, aligned, self.pool_mode
            )
        if aligned:
            raise ValueError(f"aligned=True needs roi_op='align', got {self.name!r}")
        if self.name == "warp":
            return roi_warp(
                input, boxes, output_size, spatial_scale, sampling_ratio, self.pool_mode
            )
        return roi_pool(input, boxes, output_size, spatial_scale)

    def __repr__(self) -> str:
        return f"NamedRoIOp({self.name!r}, pool_mode={self.pool_mode!r})"


def _scale(feature_size: Sequence[int], image_size: Sequence[int]) -> float:
    # torchvision's infer_scale: feature / image rounded to a power of two in log space (an
    # 800x1199 image padded to 800x1216 has a 25x38 P5: 1/32 either way); the height decides.
    return 2.0 ** round(math.log2(float(feature_size[0]) / float(image_size[0])))


class MultiLevelRoIPooler(nn.Module):
    """Pool each RoI with ``roi_op`` from the pyramid level FPN eq. 1 assigns it.

    Args:
        featmap_names: the keys of the feature dict to pool from, finest first.
        output_size: ``(PH, PW)`` or an int.
        roi_op: a callable with ``torchvision.ops.roi_align``'s signature, or a name
            (:class:`NamedRoIOp`: ``"align"``, ``"warp"``, ``"pool"``).
        sampling_ratio: samples per bin and axis (torchvision's Mask R-CNN: 2; <= 0:
            adaptive); RoIPool ignores it.
        aligned: RoIAlign's half-pixel offset (torchvision: False; detectron2: True).
        pool_mode: with a named ``roi_op`` only: ``"avg"`` | ``"max"`` (None: its default).
        canonical_scale, canonical_level: FPN eq. 1's 224 and 4.
        fpn_level: the level assignment, with :func:`fpn_level`'s signature (the default).

    ``forward(x, boxes, image_shapes)``: ``x`` a dict of ``[N, C, H_l, W_l]`` maps, ``boxes`` a
    list of ``Tensor[L_i, 4]`` per image in image coordinates, ``image_shapes`` the ``(h, w)``
    of the images (the padded batch's size, or each image's: the largest decides). Returns
    ``[sum L_i, C, PH, PW]`` in the order of the boxes.
    """

    def __init__(
        self,
        featmap_names: Sequence[str],
        output_size: int | Sequence[int],
        roi_op: str | RoIOp = "align",
        *,
        sampling_ratio: int = 2,
        aligned: bool = False,
        pool_mode: str | None = None,
        canonical_scale: float = 224,
        canonical_level: int = 4,
        fpn_level: FpnLevelFn = fpn_level,
    ):
        super().__init__()
        if isinstance(roi_op, str):
            roi_op = NamedRoIOp(roi_op, pool_mode)
            if aligned and roi_op.name != "align":
                raise ValueError(f"aligned=True needs roi_op='align', got {roi_op.name!r}")
        elif not callable(roi_op):
            raise TypeError(f"roi_op must be a callable or a name, got {type(roi_op).__name__}")
        elif pool_mode is not None:
            raise ValueError(
                "pool_mode chooses among refimpl's named operators: give roi_op a name"
            )
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.featmap_names = list(featmap_names)
        self.output_size = tuple(int(s) for s in output_size)
        self.roi_op = roi_op
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.fpn_level = fpn_level

    def forward(
        self,
        x: Mapping[str, Tensor],
        boxes: Sequence[Tensor],
        image_shapes: Sequence[Sequence[int]],
    ) -> Tensor:
        features = [v for k, v in x.items() if k in self.featmap_names]
        if not features:
            raise ValueError(f"x has none of the feature maps {self.featmap_names}")
        if len(image_shapes) == 0:
            raise ValueError("image_shapes must not be empty")
        padded = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
        scales = [_scale(f.shape[-2:], padded) for f in features]
        rois = convert_boxes_to_roi_format(list(boxes)).to(features[0].device)
        first = features[0]
        result = first.new_zeros((rois.shape[0], first.shape[1], *self.output_size))
        if rois.shape[0] == 0:
            return result
        if len(features) == 1:
            return self._pool(first, rois, scales[0]).to(result.dtype)

        # Each level halves the resolution: level k has scale 2**-k.
        k_min, k_max = round(-math.log2(scales[0])), round(-math.log2(scales[-1]))
        levels = self.fpn_level(
            torch.cat(list(boxes)), k_min, k_max, self.canonical_scale, self.canonical_level
        )
        for level, (feature, scale) in enumerate(zip(features, scales, strict=True)):
            # Each RoI is pooled once, from its own level, and written back in input order
            # (a level without RoIs is not called: an operator need not handle K = 0 here).
            idx = torch.where(levels == level)[0]
            if idx.numel() == 0:
                continue
            result[idx] = self._pool(feature, rois[idx], scale).to(result.dtype)
        return result

    def _pool(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        return self.roi_op(
            feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned
        )

    def extra_repr(self) -> str:
        op = getattr(self.roi_op, "__qualname__", None) or repr(self.roi_op)
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"roi_op={op}, sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


def fpn_roi_pooler(
    output_size: int,
    sampling_ratio: int = 2,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    roi_op: str | RoIOp = "align",
    pool_mode: str = "avg",
    aligned: bool = False,
    fpn_level: FpnLevelFn = fpn_level,
) -> MultiLevelRoIPooler:
    """The multi-level pooler of a RoI head, over P2..P5.

    Args:
        output_size: bins per side (7 for the box head, 14 for the mask head).
        sampling_ratio: RoIAlign/RoIWarp samples per bin and axis (2; <= 0: adaptive).
        canonical_scale, canonical_level: FPN eq. 1's 224 and k0 = 4.
        roi_op: ``"align"`` | ``"warp"`` | ``"pool"`` or a callable with ``roi_align``'s
            signature (then ``pool_mode`` must be ``"avg"``: the callable is what it is).
        pool_mode: ``"avg"`` | ``"max"`` for the named align and warp (RoIPool always
            max-pools, whatever this says).
        aligned: RoIAlign's half-pixel correction (detectron2: True; the paper and
            torchvision: False).
        fpn_level: the level assignment (:func:`fpn_level`).

    Call it as ``pooler(features, boxes, [padded_image_size])``: ``features`` a dict holding
    ``p2..p5``, ``boxes`` a list of ``[R_i, 4]`` per image in image pixels. Returns
    ``[sum R_i, C, S, S]`` in the order of the boxes.
    """
    if pool_mode not in POOL_MODES:
        raise ValueError(f"pool_mode must be one of {POOL_MODES}, got {pool_mode!r}")
    if callable(roi_op) and pool_mode != "avg":
        raise ValueError(f"pool_mode={pool_mode!r} needs one of refimpl's named operators")
    named_mode = None if callable(roi_op) or roi_op == "pool" else pool_mode
    return MultiLevelRoIPooler(
        POOLED_LEVELS,
        output_size,
        roi_op,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
        pool_mode=named_mode,
        canonical_scale=canonical_scale,
        canonical_level=canonical_level,
        fpn_level=fpn_level,
    )
