"""A tiny stand-in with Mask R-CNN's interface, for testing the engine in seconds.

``model(images, targets)`` returns the five losses in training and a list of detection dicts
in eval, exactly like ``refimpl.model.mask_rcnn.MaskRCNN``. The losses depend on the images,
the targets and torch's global random generator (as the real model's samplers do), so the
resume and DDP tests notice a wrong batch, a lost flip or a lost RNG state.

Use it from the command line with ``--model tests.engine.standin:build``.
"""

from __future__ import annotations

import os
import signal
import time

import torch
from torch import nn

from refimpl.model import LOSS_NAMES


class StandInMaskRCNN(nn.Module):
    def __init__(
        self,
        num_classes: int,
        nan_at: int | None = None,
        nan_loss: str = "loss_mask",
        nan_rank: int | None = None,
        sigterm_at: int | None = None,
        nan_grad_at: int | None = None,
        sleep_s: float = 0.0,
        **kwargs,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.kwargs = kwargs  # roi_op, mask_loss, ...: accepted and recorded, as the real model
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)  # a buffer DDP broadcasts, as the real backbone's
        self.head = nn.Linear(4, 5)
        # fault injection: a NaN loss at call ``nan_at`` (on rank ``nan_rank`` only, if
        # given), a SIGTERM to this process at call ``sigterm_at``, finite losses with a NaN
        # gradient at call ``nan_grad_at``; ``sleep_s`` per call slows a run down (so that a
        # test can kill it mid-way) without changing any number
        self.nan_at, self.nan_loss, self.nan_rank = nan_at, nan_loss, nan_rank
        self.sigterm_at, self.nan_grad_at, self.sleep_s = sigterm_at, nan_grad_at, sleep_s
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, images, targets=None):
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            return self._losses(images, targets)
        return [self._fake_detections(img) for img in images]

    def _losses(self, images, targets):
        self.calls += 1
        feats = torch.stack(
            [self.bn(self.conv(img[None])).relu().mean((0, 2, 3)) for img in images]
        )
        out = self.head(feats)  # [B, 5]
        wants = []
        for img, t in zip(images, targets, strict=True):
            w = img.shape[-1]
            boxes = t["boxes"]
            cx = ((boxes[:, 0] + boxes[:, 2]) / (2 * w)).mean() if len(boxes) else torch.tensor(0.5)
            area = t["masks"].float().mean() if len(t["masks"]) else torch.tensor(0.0)
            label = t["labels"].float().mean() / self.num_classes
            count = torch.tensor(len(boxes) / 4)
            wants.append(torch.stack([cx, area, label, count, img.mean()]))
        noise = 0.01 * torch.randn(out.shape)  # the samplers' randomness
        per_loss = ((out - torch.stack(wants) + noise) ** 2).mean(0)
        losses = dict(zip(LOSS_NAMES, per_loss, strict=True))
        rank = int(os.environ.get("RANK", "0"))
        if int(self.calls) == self.nan_at and self.nan_rank in (None, rank):
            losses[self.nan_loss] = losses[self.nan_loss] * float("nan")
        if int(self.calls) == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if int(self.calls) == self.nan_grad_at:
            # sqrt at 0: the value is 0 (the loss stays finite), the gradient 0 * inf = NaN
            losses["loss_mask"] = losses["loss_mask"] + (0 * self.head.weight.sum()).sqrt()
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return losses

    def _fake_detections(self, img):
        h, w = img.shape[-2:]
        masks = torch.zeros(1, 1, h, w)
        masks[..., 8:40, 8:40] = 0.9
        return {
            "boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]),
            "labels": torch.tensor([1]),
            "scores": torch.tensor([0.9]),
            "masks": masks,
        }


def build(num_classes: int, **kwargs) -> StandInMaskRCNN:
    return StandInMaskRCNN(num_classes, **kwargs)
