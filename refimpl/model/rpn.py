"""The Region Proposal Network (Faster R-CNN sec. 3.1; with FPN, Lin et al. 2017 sec. 4.1).

A small network slides over every pyramid level (the same weights on every level: FPN found
sharing works as well as not, since all levels have similar semantics): a 3x3 convolution
with ReLU, then two sibling 1x1 convolutions predicting, for each of the ``A`` anchors at a
position, an objectness logit and 4 box deltas.

Proposals (torchvision's ``filter_proposals``): decode the deltas on the anchors (no gradient
flows into the proposals: Faster R-CNN's approximate joint training), keep the top
``pre_nms_top_n`` by objectness PER LEVEL, sigmoid, clip to the image, drop boxes smaller than
1e-3, drop scores below ``score_thresh``, NMS at ``nms_thresh`` per level independently, and
keep the ``post_nms_top_n`` best PER IMAGE.

Training: match anchors to GT boxes (0.7 / 0.3 with low-quality matches), sample 256 per image
(half positives at most) and compute :func:`~refimpl.model.losses.rpn_loss`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .boxes import clip_boxes_to_image, remove_small_boxes
from .losses import rpn_loss
from .matcher import Matcher
from .parts import Parts
from .sampler import BalancedPositiveNegativeSampler


class RPNHead(nn.Module):
    """conv3x3 + ReLU, then 1x1 ``cls_logits`` (A) and 1x1 ``bbox_pred`` (4A), shared across
    levels. Initialized N(0, 0.01), bias 0 (Faster R-CNN sec. 3.1.3)."""

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        # nested Sequentials: torchvision's key layout "conv.0.0.weight"
        self.conv = nn.Sequential(
            nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU(inplace=True))
        )
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for f in features:
            t = self.conv(f)
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


def flatten_predictions(
    logits: Sequence[Tensor], deltas: Sequence[Tensor]
) -> tuple[Tensor, Tensor, list[int]]:
    """Per-level ``[N, A, H, W]`` logits and ``[N, 4A, H, W]`` deltas -> ``[N, sum HWA]`` and
    ``[N, sum HWA, 4]``, in the anchors' order (level, y, x, anchor); and the counts per level.
    """
    flat_logits, flat_deltas, counts = [], [], []
    for lg, dl in zip(logits, deltas, strict=True):
        n, a, h, w = lg.shape
        flat_logits.append(lg.permute(0, 2, 3, 1).reshape(n, -1))
        flat_deltas.append(dl.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
        counts.append(h * w * a)
    return torch.cat(flat_logits, dim=1), torch.cat(flat_deltas, dim=1), counts


class RegionProposalNetwork(nn.Module):
    """The RPN: proposals for every image and, in training, its two losses.

    Args:
        anchor_generator: :class:`~refimpl.model.anchors.AnchorGenerator`.
        head: :class:`RPNHead`.
        fg_iou_thresh, bg_iou_thresh: the matcher's thresholds (0.7, 0.3).
        batch_size_per_image, positive_fraction: the sampler's (256, 0.5).
        pre_nms_top_n, post_nms_top_n: ``{"training": n, "testing": n}``.
        nms_thresh: per-level NMS IoU threshold (0.7).
        score_thresh: minimum objectness probability (0.0).
        smooth_l1_beta: of the box loss (1/9).
        parts: the box coding, IoU, matcher, sampler and NMS (:class:`~.parts.Parts`; None:
            refimpl's). The anchors are ``anchor_generator``'s.
    """

    min_size = 1e-3  # proposals smaller than this (in pixels) are dropped

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: RPNHead,
        fg_iou_thresh: float,
        bg_iou_thresh: float,
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_top_n: dict[str, int],
        post_nms_top_n: dict[str, int],
        nms_thresh: float,
        score_thresh: float = 0.0,
        smooth_l1_beta: float = 1 / 9,
        parts: Parts | None = None,
    ):
        super().__init__()
        parts = parts or Parts()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder(
            (1.0, 1.0, 1.0, 1.0), encode_fn=parts.encode_boxes, decode_fn=parts.decode_boxes
        )
        self.proposal_matcher = Matcher(
            fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True, match_fn=parts.matcher
        )
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(
            batch_size_per_image, positive_fraction, sample_fn=parts.sampler
        )
        self.parts = parts
        self._pre_nms_top_n = dict(pre_nms_top_n)
        self._post_nms_top_n = dict(post_nms_top_n)
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.smooth_l1_beta = smooth_l1_beta

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n["training" if self.training else "testing"]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n["training" if self.training else "testing"]

    def filter_proposals(
        self,
        proposals: Tensor,
        objectness: Tensor,
        image_sizes: Sequence[Sequence[int]],
        num_anchors_per_level: Sequence[int],
    ) -> tuple[list[Tensor], list[Tensor]]:
        """``proposals [N, A, 4]``, ``objectness [N, A]`` -> per image (boxes, scores)."""
        objectness = objectness.detach()
        device = proposals.device
        # Top-n per level first: keeps every level represented and NMS cheap.
        top_idx, levels, offset = [], [], 0
        for lvl, ob in enumerate(objectness.split(list(num_anchors_per_level), dim=1)):
            k = min(self.pre_nms_top_n(), ob.shape[1])
            top_idx.append(ob.topk(k, dim=1).indices + offset)
            levels.append(torch.full((k,), lvl, dtype=torch.int64, device=device))
            offset += ob.shape[1]
        top_idx = torch.cat(top_idx, dim=1)
        levels = torch.cat(levels)
        batch_idx = torch.arange(objectness.shape[0], device=device)[:, None]
        objectness = objectness[batch_idx, top_idx]
        proposals = proposals[batch_idx, top_idx]
        probs = torch.sigmoid(objectness)

        final_boxes, final_scores = [], []
        for boxes, scores, size in zip(proposals, probs, image_sizes, strict=True):
            boxes = clip_boxes_to_image(boxes, size)
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], levels[keep]
            keep = torch.where(scores >= self.score_thresh)[0]
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            # NMS per level (FPN): boxes of different levels do not suppress each other.
            keep = self.parts.batched_nms(boxes, scores, lvl, self.nms_thresh)[
                : self.post_nms_top_n()
            ]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores

    def assign_targets_to_anchors(
        self, anchors: Tensor, targets: Sequence[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: labels ``[A]`` (1, 0, -1 ignored) and the matched GT box of each anchor."""
        labels, matched_gt_boxes = [], []
        for t in targets:
            gt_boxes = t["boxes"]
            if gt_boxes.numel() == 0:  # an image without objects: every anchor is background
                matched_gt_boxes.append(torch.zeros_like(anchors))
                labels.append(anchors.new_zeros(anchors.shape[0]))
                continue
            matched_idxs = self.proposal_matcher(self.parts.box_iou(gt_boxes, anchors))
            matched_gt_boxes.append(gt_boxes[matched_idxs.clamp(min=0)])
            lab = (matched_idxs >= 0).to(anchors.dtype)
            lab[matched_idxs == Matcher.BELOW_LOW_THRESHOLD] = 0.0
            lab[matched_idxs == Matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(lab)
        return labels, matched_gt_boxes

    def forward(
        self,
        image_size: Sequence[int],
        image_sizes: Sequence[Sequence[int]],
        features: Mapping[str, Tensor],
        targets: Sequence[dict[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """``image_size``: the padded batch's (H, W); ``image_sizes``: each image's unpadded
        (H, W); ``features``: P2..P6 (all levels are used) -> (proposals per image, losses)."""
        features = list(features.values())
        logits, deltas = self.head(features)
        anchors = self.anchor_generator(image_size, features)
        objectness, pred_bbox_deltas, num_anchors_per_level = flatten_predictions(logits, deltas)
        num_images = objectness.shape[0]

        proposals = self.box_coder.decode(
            pred_bbox_deltas.detach().reshape(-1, 4), anchors.repeat(num_images, 1)
        ).view(num_images, -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, image_sizes, num_anchors_per_level)

        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("the RPN needs targets in training mode")
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = [self.box_coder.encode(g, anchors) for g in matched_gt_boxes]
            pos, neg = self.fg_bg_sampler(labels)
            # per-image indices -> indices into the batch's concatenated anchors
            offsets = [i * anchors.shape[0] for i in range(num_images)]
            loss_objectness, loss_rpn_box_reg = rpn_loss(
                objectness.reshape(-1),
                pred_bbox_deltas.reshape(-1, 4),
                torch.cat(labels),
                torch.cat(regression_targets),
                torch.cat([p + o for p, o in zip(pos, offsets, strict=True)]),
                torch.cat([n + o for n, o in zip(neg, offsets, strict=True)]),
                beta=self.smooth_l1_beta,
            )
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}
        return boxes, losses
