"""The benchmarks' workloads: one definition for the CPU (:mod:`.ops`) and GPU (:mod:`.gpu`)
benchmarks. A workload is a batch of FPN feature maps and random boxes inside the images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Workload:
    name: str
    batch: int
    channels: int
    height: int  # feature map, pixels
    width: int
    stride: int  # image pixels per feature pixel: the image is (height, width) * stride
    n_boxes: int
    min_side: float  # box sides in image pixels
    max_side: float
    output_size: int = 7
    sampling_ratio: int = 2
    aligned: bool = True

    @property
    def spatial_scale(self) -> float:
        return 1.0 / self.stride

    def make(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``x [N, C, H, W]``, ``rois [K, 5]`` (boxes inside the image, sides uniform in
        ``[min_side, max_side]`` clipped to the image) and ``grad_output [K, C, P, P]``,
        float32."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.batch, self.channels, self.height, self.width), np.float32)
        image = np.array([self.width, self.height]) * self.stride
        wh = rng.uniform(self.min_side, self.max_side, (self.n_boxes, 2))
        wh = np.minimum(wh, image)
        xy = rng.uniform(0.0, 1.0, (self.n_boxes, 2)) * (image - wh)
        index = rng.integers(0, self.batch, self.n_boxes)
        rois = np.column_stack([index, xy, xy + wh]).astype(np.float32)
        p = self.output_size
        grad = rng.standard_normal((self.n_boxes, self.channels, p, p), np.float32)
        return x, rois, grad
