"""Pooling each RoI from the feature-pyramid level that suits its size (FPN, Lin et al. 2017,
eq. 1), as the Mask R-CNN heads do (Mask R-CNN sec. 3, "Network Architecture").

``MultiScaleRoIAlign`` is torchvision's module (the same constructor and call), plus
RoIAlign's ``aligned`` and ``pool_mode``; ``MultiScaleRoIPool`` and ``MultiScaleRoIWarp``
pool with the other operators of the paper's Table 2c. As torchvision's, they script and
fx-trace (the steps are fx leaves: ``get_graph_node_names`` sees the pooler's inputs and
its steps).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from .functional import convert_boxes_to_roi_format, roi_align, roi_pool, roi_warp

__all__ = [
    "LevelMapper",
    "MultiScaleRoIAlign",
    "MultiScaleRoIPool",
    "MultiScaleRoIWarp",
    "infer_scale",
]


def infer_scale(feature_size: list[int], image_size: list[int]) -> float:
    """The level's ``spatial_scale``: ``feature / image`` rounded to a power of two in log
    space, as torchvision does (a 800x1199 image padded to 800x1216 has a 25x38 P5: the ratios
    1/32 and 1/31.6 both give 1/32). The height decides, as in torchvision."""
    # (torch.log2, not math.log2: TorchScript has no math.log2; both round half to even)
    ratio = torch.tensor(float(feature_size[0]) / float(image_size[0]), dtype=torch.float64)
    return 2.0 ** float(torch.round(torch.log2(ratio)).item())


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
        canonical_scale: float = 224.0,
        canonical_level: int = 4,
        eps: float = 1e-6,
    ):
        self.k_min = k_min
        self.k_max = k_max
        self.s0 = float(canonical_scale)
        self.lvl0 = canonical_level
        self.eps = eps

    def __call__(self, boxlists: list[Tensor]) -> Tensor:
        boxes = torch.cat(boxlists)
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


# --- the steps of a multi-scale pooler: fx leaves, as torchvision's ------------------------------


@torch.fx.wrap
def _filter_input(x: dict[str, Tensor], featmap_names: list[str]) -> list[Tensor]:
    """The maps to pool from, in the dict's order (as torchvision)."""
    features: list[Tensor] = []
    for k, v in x.items():  # (a loop: TorchScript has no comprehension with a condition)
        if k in featmap_names:
            features.append(v)
    if len(features) == 0:
        raise ValueError(f"x has none of the feature maps {featmap_names}")
    return features


@torch.fx.wrap
def _setup_scales(
    features: list[Tensor],
    image_shapes: list[tuple[int, int]],
    canonical_scale: float,
    canonical_level: int,
) -> tuple[list[float], LevelMapper]:
    """Each level's scale, and the level mapper over the levels they span."""
    if len(image_shapes) == 0:
        raise ValueError("image_shapes must not be empty")
    # Images are padded to a common size before the backbone: the largest one.
    padded_h = 0
    padded_w = 0
    for shape in image_shapes:
        padded_h = max(padded_h, shape[0])
        padded_w = max(padded_w, shape[1])
    scales = [infer_scale(f.shape[-2:], [padded_h, padded_w]) for f in features]
    # Each level halves the resolution: level k has scale 2**-k.
    k_min = int(round(-math.log(scales[0], 2.0)))
    k_max = int(round(-math.log(scales[-1], 2.0)))
    return scales, LevelMapper(k_min, k_max, canonical_scale, canonical_level)


def _pool(
    feature: Tensor,
    rois: Tensor,
    scale: float,
    roi_op: str,
    pooled: list[int],
    sampling_ratio: int,
    aligned: bool,
    pool_mode: str,
) -> Tensor:
    if roi_op == "pool":
        return roi_pool(feature, rois, pooled, scale)
    if roi_op == "warp":
        return roi_warp(feature, rois, pooled, scale, sampling_ratio, pool_mode)
    return roi_align(feature, rois, pooled, scale, sampling_ratio, aligned, pool_mode)


@torch.fx.wrap
def _multiscale_pool(
    features: list[Tensor],
    boxes: list[Tensor],
    scales: list[float],
    mapper: LevelMapper,
    roi_op: str,
    pooled: list[int],
    sampling_ratio: int,
    aligned: bool,
    pool_mode: str,
) -> Tensor:
    """Each RoI pooled once, from its own level, and written back in input order."""
    rois = convert_boxes_to_roi_format(boxes).to(features[0].device)
    if len(features) == 1:
        return _pool(
            features[0], rois, scales[0], roi_op, pooled, sampling_ratio, aligned, pool_mode
        )
    levels = mapper(boxes)
    first = features[0]
    result = first.new_zeros((rois.shape[0], first.shape[1], pooled[0], pooled[1]))
    for level, (feature, scale) in enumerate(zip(features, scales)):  # noqa: B905 (TorchScript)
        idx = torch.where(levels == level)[0]
        pooled_level = _pool(
            feature, rois[idx], scale, roi_op, pooled, sampling_ratio, aligned, pool_mode
        )
        result[idx] = pooled_level.to(result.dtype)
    return result


@torch.jit.unused
def _is_fx_tracing() -> bool:
    # A symbolic trace must not leave Proxies behind in self.scales (torchvision's module
    # then no longer scripts).
    return torch.fx._symbolic_trace.is_fx_symbolic_tracing()


class _MultiScalePooler(nn.Module):
    """What the multi-scale poolers share: the level assignment and the pooling loop.

    ``forward(x, boxes, image_shapes)``: ``x`` a dict of ``[N, C, H_l, W_l]`` maps, ``boxes``
    a list of ``Tensor[L_i, 4]`` per image in image coordinates, ``image_shapes`` the
    ``(h, w)`` of each image before padding. Returns ``[sum L_i, C, PH, PW]``.

    Unlike torchvision's module, the scales are recomputed at every call (they are cheap),
    so a first batch of another size cannot leave stale scales behind; ``self.scales`` and
    ``self.map_levels`` hold those of the last call.
    """

    __annotations__ = {"scales": list[float] | None, "map_levels": LevelMapper | None}

    def __init__(
        self,
        roi_op: str,
        featmap_names: list[str],
        output_size: int | tuple[int, int] | list[int],
        sampling_ratio: int,
        canonical_scale: float,
        canonical_level: int,
        aligned: bool,
        pool_mode: str,
    ):
        super().__init__()
        self.roi_op = roi_op
        self.featmap_names = list(featmap_names)
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = float(canonical_scale)
        self.canonical_level = canonical_level
        self.aligned = aligned
        self.pool_mode = pool_mode
        self.scales = None
        self.map_levels = None

    def forward(
        self,
        x: dict[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        scales, mapper = _setup_scales(
            features, image_shapes, self.canonical_scale, self.canonical_level
        )
        record = True
        if not torch.jit.is_scripting():  # (a branch TorchScript does not compile)
            record = not _is_fx_tracing()
        if record:
            self.scales = scales
            self.map_levels = mapper
        pooled = [self.output_size[0], self.output_size[1]]
        return _multiscale_pool(
            features, boxes, scales, mapper, self.roi_op, pooled, self.sampling_ratio,
            self.aligned, self.pool_mode,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}"
        )


class MultiScaleRoIAlign(_MultiScalePooler):
    """RoIAlign over a feature pyramid (Mask R-CNN sec. 3 with FPN), torchvision's module.

    Each RoI is pooled from one level, chosen by its size (FPN eq. 1, :class:`LevelMapper`);
    each level's ``spatial_scale`` is inferred from its size relative to the (padded) image
    size, as a power of two (:func:`infer_scale`).

    Args:
        featmap_names: the keys of the feature dict to pool from, finest first (a dict's own
            order decides, as in torchvision).
        output_size: ``(PH, PW)`` or an int.
        sampling_ratio: as :func:`refimpl.ops.roi_align` (torchvision's Mask R-CNN: 2).
        canonical_scale, canonical_level: FPN eq. 1's 224 and 4.
        aligned: as :func:`refimpl.ops.roi_align` (torchvision: False; detectron2: True).
        pool_mode: ``"avg"`` (the paper's) or ``"max"``.
        roi_op: deprecated (a pooler named RoIAlign that does RoIPool): ``"warp"`` and
            ``"pool"`` are :class:`MultiScaleRoIWarp` and :class:`MultiScaleRoIPool`.

    ``forward(x, boxes, image_shapes)`` as torchvision's (see :class:`_MultiScalePooler`).
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int | tuple[int, int] | list[int],
        sampling_ratio: int,
        *,
        canonical_scale: float = 224,
        canonical_level: int = 4,
        aligned: bool = False,
        pool_mode: str | None = None,
        roi_op: str | None = None,
    ):
        if roi_op is not None and roi_op != "align":
            if roi_op not in ("warp", "pool"):
                raise ValueError(f"roi_op must be 'align', 'warp' or 'pool', got {roi_op!r}")
            replacement = "MultiScaleRoIPool" if roi_op == "pool" else "MultiScaleRoIWarp"
            warnings.warn(
                f"MultiScaleRoIAlign(roi_op={roi_op!r}) is deprecated: use {replacement}",
                DeprecationWarning,
                stacklevel=2,
            )
            if aligned:
                raise ValueError(f"aligned=True needs roi_op='align', got {roi_op!r}")
            if roi_op == "pool" and pool_mode not in (None, "max"):
                raise ValueError(f"roi_op='pool' always max-pools, got pool_mode={pool_mode!r}")
        roi_op = roi_op or "align"
        default_mode = "avg" if roi_op == "align" else "max"
        super().__init__(
            roi_op, featmap_names, output_size, sampling_ratio, canonical_scale,
            canonical_level, aligned, pool_mode or default_mode,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, aligned={self.aligned}, pool_mode={self.pool_mode!r}" + (
            "" if self.roi_op == "align" else f", roi_op={self.roi_op!r}"
        )


class MultiScaleRoIWarp(_MultiScalePooler):
    """RoIWarp over a feature pyramid (Mask R-CNN Table 2c on FPN): the box quantized once,
    then sampled bilinearly; ``pool_mode`` ``"max"`` (MNC's, the default) or ``"avg"``.
    Arguments and call as :class:`MultiScaleRoIAlign`."""

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int | tuple[int, int] | list[int],
        sampling_ratio: int,
        *,
        canonical_scale: float = 224,
        canonical_level: int = 4,
        pool_mode: str = "max",
    ):
        super().__init__(
            "warp", featmap_names, output_size, sampling_ratio, canonical_scale,
            canonical_level, False, pool_mode,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pool_mode={self.pool_mode!r}"


class MultiScaleRoIPool(_MultiScalePooler):
    """RoIPool over a feature pyramid (Fast R-CNN's pooling on FPN levels; Mask R-CNN Table
    2c): two quantizations, max-pooled bins. Arguments and call as
    :class:`MultiScaleRoIAlign`, without a sampling ratio."""

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int | tuple[int, int] | list[int],
        *,
        canonical_scale: float = 224,
        canonical_level: int = 4,
    ):
        super().__init__(
            "pool", featmap_names, output_size, -1, canonical_scale, canonical_level, False, "max"
        )

    def extra_repr(self) -> str:
        return f"featmap_names={self.featmap_names}, output_size={self.output_size}"
