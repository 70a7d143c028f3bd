"""Data: the synthetic shapes generator (writes a real COCO dataset) and a COCO dataset.

- :mod:`refimpl.data.shapes`: matterport's ``shapes`` sample (and a harder variant for the
  ablations), written to disk as ``images/*.png`` + ``annotations/instances_{split}.json``.
- :mod:`refimpl.data.coco`: a torchvision-style ``CocoDetection`` on pycocotools that reads
  any COCO instances file and returns Mask R-CNN targets.
- :mod:`refimpl.data.transforms`: the (image, target) transforms (to tensor, flip, resize).
"""

from .coco import CocoDetection, collate_fn, split_paths
from .shapes import SHAPES, SHAPES_HARD, ShapesConfig, generate_image, write_shapes_dataset
from .transforms import Compose, RandomHorizontalFlip, Resize, ToTensor

__all__ = [
    "SHAPES",
    "SHAPES_HARD",
    "CocoDetection",
    "Compose",
    "RandomHorizontalFlip",
    "Resize",
    "ShapesConfig",
    "ToTensor",
    "collate_fn",
    "generate_image",
    "split_paths",
    "write_shapes_dataset",
]
