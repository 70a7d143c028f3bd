"""Helpers for the model tests: tiny models and synthetic images with boxes and masks."""

from __future__ import annotations

import torch

from refimpl.data.rectangles import rectangles_batch
from refimpl.model import MaskRCNN, maskrcnn_fpn

# A Mask R-CNN small enough for float64 gradient checks: 64 x 64 images, 4-wide ResNet,
# 2-channel FPN, 2x2 box RoIs and 4x4 mask RoIs (8x8 masks).
TINY = {
    "min_size": 64,
    "max_size": 64,
    "backbone": "small",
    "backbone_width": 4,
    "fpn_channels": 2,
    "anchor_sizes": (8, 16, 32, 64, 128),
    "canonical_scale": 32,
    "representation_size": 6,
    "mask_layers": (2,),
    "mask_dim_reduced": 2,
    "box_roi_output_size": 2,
    "mask_roi_output_size": 4,
}


def tiny_model(num_classes: int = 3, **kwargs) -> MaskRCNN:
    torch.manual_seed(0)
    return maskrcnn_fpn(num_classes, **{**TINY, **kwargs})


def synthetic_batch(size: int = 128, num_images: int = 2, dtype=torch.float32, seed: int = 0):
    """Random images, each with two filled rectangles (fractional boxes) of classes 1 and 2."""
    return rectangles_batch(size, num_images, dtype, seed)
