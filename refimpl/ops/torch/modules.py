"""``nn.Module`` wrappers of the RoI operators, with torchvision's constructors:
``RoIAlign``, ``RoIPool``, ``RoIWarp`` and ``PrRoIPool`` hold an operator's parameters.

They script (``torch.jit.script``) and trace (``torch.fx.symbolic_trace``: the functions
they call are fx leaves, as torchvision's).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from .functional import prroi_pool, roi_align, roi_pool, roi_warp

__all__ = ["PrRoIPool", "RoIAlign", "RoIPool", "RoIWarp"]

# Calls of these names from this module's forwards are single nodes of an fx graph.
for _name in ("prroi_pool", "roi_align", "roi_pool", "roi_warp"):
    torch.fx.wrap(_name)


class RoIAlign(nn.Module):
    """See :func:`refimpl.ops.roi_align` (Mask R-CNN sec. 3)."""

    def __init__(
        self,
        output_size: BroadcastingList2[int],
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
    """See :func:`refimpl.ops.roi_pool` (Fast R-CNN sec. 2.1)."""

    def __init__(self, output_size: BroadcastingList2[int], spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class RoIWarp(nn.Module):
    """See :func:`refimpl.ops.roi_warp` (Mask R-CNN Table 2c)."""

    def __init__(
        self,
        output_size: BroadcastingList2[int],
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
    """See :func:`refimpl.ops.prroi_pool` (IoU-Net sec. 3.3); differentiable with respect to
    the boxes too."""

    def __init__(
        self, output_size: BroadcastingList2[int], spatial_scale: float, aligned: bool = False
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
