"""Input and output transforms: images in, a padded batch out; detections back to the
original images (Mask R-CNN sec. 3.1, "Implementation Details": images are resized so that the
shorter side is 800 pixels; torchvision also caps the longer side at 1333).

Exactly torchvision's ``GeneralizedRCNNTransform``:

- normalize each image with the ImageNet mean and std (images are RGB in [0, 1]);
- resize by ``scale = min(min_size / short side, max_size / long side)`` with bilinear
  interpolation (``align_corners=False``), ``recompute_scale_factor=True``: the output size is
  ``floor(side * scale)`` and the sampling grid uses ``output / input``, not ``scale``; GT
  masks are resized the same way with nearest-neighbour interpolation and GT boxes scaled by
  ``output / input`` per axis; in training a ``min_size`` is drawn at random from the tuple
  (multi-scale training; one draw per image from torch's RNG, as torchvision);
- batch by zero-padding height and width up to a multiple of 32 (the coarsest FPN stride
  before P6), keeping each image's unpadded size for clipping;
- postprocess: boxes scaled back to the original size, and each 28x28 mask pasted into the
  image as torchvision's ``paste_masks_in_image`` does (see :func:`paste_masks_in_image`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageList(NamedTuple):
    """A padded batch ``tensors [N, 3, H, W]`` and each image's unpadded ``(h, w)``."""

    tensors: Tensor
    image_sizes: list[tuple[int, int]]


def resize_boxes(boxes: Tensor, original_size: Sequence[int], new_size: Sequence[int]) -> Tensor:
    """Scale ``[N, 4]`` boxes from an ``original_size`` (h, w) image to a ``new_size`` one.

    The ratios are float32, as in torchvision (then promoted to the boxes' dtype)."""
    ratio_h, ratio_w = (
        torch.tensor(s, dtype=torch.float32, device=boxes.device)
        / torch.tensor(s_orig, dtype=torch.float32, device=boxes.device)
        for s, s_orig in zip(new_size, original_size, strict=True)
    )
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack([x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h], dim=1)


def expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Scale boxes by ``scale`` about their centres."""
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], dim=1)


def paste_mask_in_image(mask: Tensor, box: Sequence[int], im_h: int, im_w: int) -> Tensor:
    """Paste one ``[M, M]`` mask into a zero ``[im_h, im_w]`` canvas at the integer ``box``.

    The mask is resized bilinearly (``align_corners=False``) to ``int(x2 - x1 + 1)`` by
    ``int(y2 - y1 + 1)`` pixels (at least 1) with its top-left pixel at ``(x1, y1)``; the part
    outside the image is cut off.
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    mask = F.interpolate(mask[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    canvas = mask.new_zeros((im_h, im_w))
    x_0, x_1 = max(x1, 0), min(x2 + 1, im_w)
    y_0, y_1 = max(y1, 0), min(y2 + 1, im_h)
    if x_1 > x_0 and y_1 > y_0:
        canvas[y_0:y_1, x_0:x_1] = mask[(y_0 - y1) : (y_1 - y1), (x_0 - x1) : (x_1 - x1)]
    return canvas


def paste_masks_in_image(
    masks: Tensor, boxes: Tensor, image_size: Sequence[int], padding: int = 1
) -> Tensor:
    """Paste ``[D, 1, M, M]`` mask probabilities into ``[D, 1, H, W]`` images.

    torchvision's method: pad each mask by ``padding`` zero pixels per side and scale its box
    by ``(M + 2 padding) / M`` about the centre to match, so that the bilinear resize fades
    to 0 at the box border instead of extending the border value; then truncate the box to
    integers (``.to(int64)``, towards zero) and paste with :func:`paste_mask_in_image`.
    """
    m = masks.shape[-1]
    scale = float(m + 2 * padding) / m
    masks = F.pad(masks, (padding,) * 4)
    int_boxes = expand_boxes(boxes, scale).to(torch.int64).tolist()
    im_h, im_w = image_size
    pasted = [
        paste_mask_in_image(mk[0], b, im_h, im_w) for mk, b in zip(masks, int_boxes, strict=True)
    ]
    if not pasted:
        return masks.new_empty((0, 1, im_h, im_w))
    return torch.stack(pasted)[:, None]


PasteMasksFn = Callable[[Tensor, Tensor, Sequence[int]], Tensor]


class GeneralizedRCNNTransform(nn.Module):
    """Normalize, resize and batch the images (and targets); map detections back.

    Args:
        min_size: the shorter side after resizing (an int, or a tuple to draw from in
            training; evaluation uses the last).
        max_size: the largest longer side.
        image_mean, image_std: per-channel normalization.
        size_divisible: pad the batch to a multiple of this (32).
        paste_masks: ``(masks [D, 1, M, M], boxes [D, 4], image_size) -> [D, 1, H, W]``
            (:func:`paste_masks_in_image`, the default; the part ``Parts.paste_masks``).
    """

    def __init__(
        self,
        min_size: int | Sequence[int],
        max_size: int,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        size_divisible: int = 32,
        paste_masks: PasteMasksFn = paste_masks_in_image,
    ):
        super().__init__()
        self.min_size = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        self.max_size = max_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.size_divisible = size_divisible
        self.paste_masks = paste_masks

    def normalize(self, image: Tensor) -> Tensor:
        if not image.is_floating_point():
            raise TypeError(f"images must be floating point in [0, 1], got {image.dtype}")
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]

    def _target_min_size(self) -> int:
        if not self.training:
            return self.min_size[-1]
        # torchvision's torch_choice: drawn with torch's RNG even for a single size, so that
        # the random streams of the two implementations stay in step.
        index = int(torch.empty(1).uniform_(0.0, float(len(self.min_size))).item())
        return self.min_size[index]

    def resize(
        self, image: Tensor, target: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        h, w = image.shape[-2:]
        size = self._target_min_size()
        scale = min(size / min(h, w), self.max_size / max(h, w))
        image = F.interpolate(
            image[None],
            scale_factor=scale,
            mode="bilinear",
            recompute_scale_factor=True,
            align_corners=False,
        )[0]
        if target is None:
            return image, None
        target = dict(target)
        target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        if "masks" in target:
            masks = target["masks"]
            if masks.shape[0] == 0:  # interpolate refuses an empty batch
                target["masks"] = masks.new_zeros((0, *image.shape[-2:]), dtype=torch.uint8)
            else:
                masks = F.interpolate(
                    masks[:, None].float(), scale_factor=scale, recompute_scale_factor=True
                )
                target["masks"] = masks[:, 0].byte()
        return image, target

    def batch_images(self, images: Sequence[Tensor]) -> Tensor:
        """Zero-pad to a common size, rounded up to a multiple of ``size_divisible``."""
        stride = float(self.size_divisible)
        h = int(math.ceil(max(img.shape[-2] for img in images) / stride) * stride)
        w = int(math.ceil(max(img.shape[-1] for img in images) / stride) * stride)
        batch = images[0].new_zeros((len(images), images[0].shape[0], h, w))
        for i, img in enumerate(images):
            batch[i, :, : img.shape[-2], : img.shape[-1]].copy_(img)
        return batch

    def forward(
        self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
    ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        out_images, out_targets = [], [] if targets is not None else None
        for i, image in enumerate(images):
            if image.dim() != 3:
                raise ValueError(f"images must be [C, H, W] tensors, got {tuple(image.shape)}")
            image, target = self.resize(
                self.normalize(image), targets[i] if targets is not None else None
            )
            out_images.append(image)
            if out_targets is not None:
                out_targets.append(target)
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in out_images]
        return ImageList(self.batch_images(out_images), sizes), out_targets

    def postprocess(
        self,
        result: list[dict[str, Tensor]],
        image_sizes: Sequence[Sequence[int]],
        original_image_sizes: Sequence[Sequence[int]],
    ) -> list[dict[str, Tensor]]:
        """Boxes back to the original image size; masks pasted into it (``[D, 1, H, W]``)."""
        for pred, size, orig in zip(result, image_sizes, original_image_sizes, strict=True):
            pred["boxes"] = resize_boxes(pred["boxes"], size, orig)
            if "masks" in pred:
                pred["masks"] = self.paste_masks(pred["masks"], pred["boxes"], orig)
        return result
