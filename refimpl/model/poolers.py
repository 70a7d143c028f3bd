"""Pooling each RoI's features from the pyramid level that suits its size.

FPN (Lin et al. 2017, sec. 4.2, eq. 1) assigns a RoI of width ``w`` and height ``h`` (in image
pixels) to level::

    k = floor(k0 + log2(sqrt(w h) / 224))        (k0 = 4, clamped to P2..P5)

so that a 224x224 RoI (the ImageNet pre-training size) is pooled from P4 and a RoI half as
large from P3. ``canonical_scale`` (224) is a parameter: on small images it should shrink
with the image, or every RoI lands on P2. torchvision adds 1e-6 inside the floor, so that an
exact power of two is not pushed down a level by rounding.

The RoI operator itself is a choice (Mask R-CNN sec. 3, Table 2c): ``"align"`` (RoIAlign, the
paper's), ``"warp"`` (RoIWarp: one quantization) or ``"pool"`` (RoIPool: two quantizations),
with ``pool_mode`` "avg" or "max" for align and warp. Each level's ``spatial_scale`` is
``1 / stride``, a power of two inferred from the feature size relative to the image size.

The pooling itself is :class:`refimpl.ops.MultiScaleRoIAlign` (stage 1's multi-level module,
torchvision-compatible); this file chooses its arguments for the model.
"""

from __future__ import annotations

from refimpl.ops import LevelMapper, MultiScaleRoIAlign

ROI_OPS = ("align", "warp", "pool")
POOL_MODES = ("avg", "max")
# The pyramid levels the RoI heads pool from: P6 serves the RPN only (FPN sec. 4.2).
POOLED_LEVELS = ("p2", "p3", "p4", "p5")

__all__ = ["POOLED_LEVELS", "ROI_OPS", "LevelMapper", "MultiScaleRoIAlign", "fpn_roi_pooler"]


def fpn_roi_pooler(
    output_size: int,
    sampling_ratio: int = 2,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    roi_op: str = "align",
    pool_mode: str = "avg",
    aligned: bool = False,
) -> MultiScaleRoIAlign:
    """The multi-level pooler of a RoI head.

    Args:
        output_size: bins per side (7 for the box head, 14 for the mask head).
        sampling_ratio: RoIAlign/RoIWarp samples per bin and axis (2; <= 0: adaptive).
        canonical_scale, canonical_level: FPN eq. 1's 224 and k0 = 4.
        roi_op: ``"align"`` | ``"warp"`` | ``"pool"``.
        pool_mode: ``"avg"`` | ``"max"`` for align and warp (RoIPool always max-pools).
        aligned: RoIAlign's half-pixel correction (detectron2: True; the paper and
            torchvision: False).

    Call it as ``pooler(features, boxes, [padded_image_size])``: ``features`` a dict holding
    ``p2..p5``, ``boxes`` a list of ``[R_i, 4]`` per image in image pixels. Returns
    ``[sum R_i, C, S, S]`` in the order of the boxes.
    """
    if roi_op not in ROI_OPS:
        raise ValueError(f"roi_op must be one of {ROI_OPS}, got {roi_op!r}")
    if pool_mode not in POOL_MODES:
        raise ValueError(f"pool_mode must be one of {POOL_MODES}, got {pool_mode!r}")
    return MultiScaleRoIAlign(
        list(POOLED_LEVELS),
        output_size,
        sampling_ratio,
        canonical_scale=canonical_scale,
        canonical_level=canonical_level,
        aligned=aligned,
        pool_mode=None if roi_op == "pool" else pool_mode,
        roi_op=roi_op,
    )
