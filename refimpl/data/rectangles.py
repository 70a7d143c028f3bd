"""A tiny in-memory batch for model checks: each image holds two filled rectangles with
fractional boxes, classes 1 and 2 (the model tests' and the capstone's parity batch)."""

from __future__ import annotations

import torch


def rectangles_batch(
    size: int = 128, num_images: int = 2, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """``(images, targets)`` in torchvision's detection format: random ``[3, size, size]``
    images in ``dtype``, each with two rectangles whose boxes end at fractional coordinates."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i in range(num_images):
        img = torch.rand(3, size, size, generator=g, dtype=dtype) * 0.3
        boxes, masks = [], []
        for k in range(2):
            x1, y1 = (torch.rand(2, generator=g) * size * 0.5 + 0.3).tolist()
            w, h = (torch.rand(2, generator=g) * size * 0.3 + size * 0.15).tolist()
            box = [x1, y1, min(x1 + w, size - 1.3), min(y1 + h, size - 1.7)]
            mask = torch.zeros(size, size, dtype=torch.uint8)
            mask[int(box[1]) + 1 : int(box[3]), int(box[0]) + 1 : int(box[2])] = 1
            img[:, mask.bool()] = 0.5 + 0.4 * k + 0.05 * i
            boxes.append(box)
            masks.append(mask)
        images.append(img)
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=dtype),
                "labels": torch.tensor([1, 2]),
                "masks": torch.stack(masks),
            }
        )
    return images, targets
