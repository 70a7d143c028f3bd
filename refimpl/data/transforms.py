"""(image, target) transforms for detection, as torchvision's detection reference has them.

Each transform takes and returns ``(image, target)``, so boxes and masks move with the
pixels. ``ToTensor`` comes first; the others work on tensors. Randomness comes from torch's
global generator, which the training engine seeds per sample (so a resumed run sees the same
flips as an uninterrupted one).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class ToTensor:
    """PIL image or uint8 [H, W, 3] array -> float32 [3, H, W] in 0..1."""

    def __call__(self, image, target):
        if torch.is_tensor(image):  # already converted (the dataset converts first)
            return image, target
        array = np.asarray(image)
        if array.ndim == 2:  # greyscale
            array = np.repeat(array[..., None], 3, axis=2)
        # in NumPy, one pass: small torch ops on a strided view are slow under thread contention
        chw = np.ascontiguousarray(array[..., :3].transpose(2, 0, 1), dtype=np.float32)
        return torch.from_numpy(chw * np.float32(1 / 255)), target

    def __repr__(self) -> str:
        return "ToTensor()"


class RandomHorizontalFlip:
    """Mirror the image, its boxes (x1' = W - x2, x2' = W - x1) and masks with probability p."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, target):
        if self.p > 0 and torch.rand(()) < self.p:
            image = image.flip(-1)
            if target is not None:
                target = dict(target)
                width = image.shape[-1]
                boxes = target["boxes"].clone()
                boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
                target["boxes"] = boxes
                if "masks" in target:
                    target["masks"] = target["masks"].flip(-1)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Resize:
    """Scale so the short side is ``min_size`` and the long side at most ``max_size``.

    Optional: the model's own transform resizes too (Mask R-CNN, Sec. 3.1: the short side is
    800 pixels). Use this to store smaller tensors, e.g. when reading full-size COCO images
    for a small-image model. Image bilinear, masks nearest, boxes scaled; ``area`` rescaled.
    """

    def __init__(self, min_size: int, max_size: int | None = None):
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image, target):
        h, w = image.shape[-2:]
        scale = self.min_size / min(h, w)
        if self.max_size is not None and max(h, w) * scale > self.max_size:
            scale = self.max_size / max(h, w)
        new_h, new_w = round(h * scale), round(w * scale)
        if (new_h, new_w) == (h, w):
            return image, target
        image = F.interpolate(
            image[None], size=(new_h, new_w), mode="bilinear", align_corners=False
        )[0]
        if target is not None:
            target = dict(target)
            sx, sy = new_w / w, new_h / h
            target["boxes"] = target["boxes"] * torch.tensor([sx, sy, sx, sy])
            if "masks" in target and target["masks"].shape[0]:
                target["masks"] = F.interpolate(
                    target["masks"][None].float(), size=(new_h, new_w), mode="nearest"
                )[0].to(target["masks"].dtype)
            elif "masks" in target:
                target["masks"] = target["masks"].new_zeros((0, new_h, new_w))
            if "area" in target:
                target["area"] = target["area"] * (sx * sy)
        return image, target

    def __repr__(self) -> str:
        return f"Resize(min_size={self.min_size}, max_size={self.max_size})"


def detection_transforms(train: bool, hflip: float = 0.5, resize=None) -> Compose:
    """The standard pipeline: ToTensor [+ Resize] [+ RandomHorizontalFlip when training]."""
    ts = [ToTensor()]
    if resize is not None:
        ts.append(Resize(*resize) if isinstance(resize, tuple | list) else Resize(resize))
    if train and hflip > 0:
        ts.append(RandomHorizontalFlip(hflip))
    return Compose(ts)
