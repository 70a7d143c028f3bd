"""The RoI heads: the second stage of Mask R-CNN (sec. 3), the box branch and the mask branch
in parallel on the RPN's proposals.

Training (sec. 3.1, "Training"): the GT boxes are appended to the proposals (so that every GT
has at least one well-placed RoI early in training), each RoI is matched to a GT box (IoU >=
0.5 foreground, < 0.5 background), 512 RoIs per image are sampled with at most 25% foreground,
the box losses are computed on all sampled RoIs and the mask loss on the foreground ones only
("L_mask is defined only on positive RoIs").

Inference (sec. 3.1, "Inference"): the box branch runs on all proposals; per class, the boxes
are decoded, clipped, thresholded (score > 0.05), NMSed (0.5) and the best 100 detections of
the image are kept; then the mask branch runs on those detections only ("which speeds up
inference and improves accuracy").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .box_coder import BoxCoder
from .boxes import clip_boxes_to_image, remove_small_boxes
from .losses import fastrcnn_loss, maskrcnn_loss
from .mask_head import maskrcnn_inference
from .matcher import Matcher
from .parts import Parts
from .sampler import BalancedPositiveNegativeSampler


class RoIHeads(nn.Module):
    """Box and mask branches over the proposals.

    Args:
        box_roi_pool, box_head, box_predictor: pooler (7x7,
            :class:`~.poolers.MultiLevelRoIPooler`), :class:`TwoMLPHead`,
            :class:`FastRCNNPredictor`.
        fg_iou_thresh, bg_iou_thresh: the matcher's (0.5, 0.5).
        batch_size_per_image, positive_fraction: the sampler's (512, 0.25).
        bbox_reg_weights: the box coder's (10, 10, 5, 5).
        score_thresh, nms_thresh, detections_per_img: inference (0.05, 0.5, 100).
        mask_roi_pool, mask_head, mask_predictor: pooler (14x14), :class:`MaskRCNNHeads`,
            :class:`MaskRCNNPredictor`.
        mask_loss: ``"sigmoid"`` | ``"softmax"`` | ``"agnostic"``.
        box_smooth_l1_beta: the box loss's (1/9).
        binarize_mask_targets: threshold the mask targets at 0.5 (detectron2).
        parts: box coding, IoU, matcher, sampler, NMS, mask targets and mask loss
            (:class:`~.parts.Parts`; None: refimpl's). The RoI operator is the poolers'.
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_head: nn.Module,
        box_predictor: nn.Module,
        fg_iou_thresh: float,
        bg_iou_thresh: float,
        batch_size_per_image: int,
        positive_fraction: float,
        bbox_reg_weights: Sequence[float] | None,
        score_thresh: float,
        nms_thresh: float,
        detections_per_img: int,
        mask_roi_pool: nn.Module,
        mask_head: nn.Module,
        mask_predictor: nn.Module,
        mask_loss: str = "sigmoid",
        box_smooth_l1_beta: float = 1 / 9,
        binarize_mask_targets: bool = False,
        parts: Parts | None = None,
    ):
        super().__init__()
        parts = parts or Parts()
        self.parts = parts
        self.proposal_matcher = Matcher(
            fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False, match_fn=parts.matcher
        )
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(
            batch_size_per_image, positive_fraction, sample_fn=parts.sampler
        )
        self.box_coder = BoxCoder(
            bbox_reg_weights or (10.0, 10.0, 5.0, 5.0),
            encode_fn=parts.encode_boxes,
            decode_fn=parts.decode_boxes,
        )
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        self.mask_loss = mask_loss
        self.box_smooth_l1_beta = box_smooth_l1_beta
        self.binarize_mask_targets = binarize_mask_targets

    # --- training: which RoIs, with which targets ------------------------------------------

    def assign_targets_to_proposals(
        self, proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: the matched GT index of each proposal (clamped to >= 0) and its label
        (the GT's class, 0 background, -1 ignored)."""
        matched_idxs, labels = [], []
        for props, boxes, classes in zip(proposals, gt_boxes, gt_labels, strict=True):
            if boxes.numel() == 0:  # an image without objects: all background
                matched_idxs.append(props.new_zeros(props.shape[0], dtype=torch.int64))
                labels.append(props.new_zeros(props.shape[0], dtype=torch.int64))
                continue
            idx = self.proposal_matcher(self.parts.box_iou(boxes, props))
            lab = classes[idx.clamp(min=0)].to(torch.int64)
            lab[idx == Matcher.BELOW_LOW_THRESHOLD] = 0
            lab[idx == Matcher.BETWEEN_THRESHOLDS] = -1  # ignored by the sampler
            matched_idxs.append(idx.clamp(min=0))
            labels.append(lab)
        return matched_idxs, labels

    def select_training_samples(
        self, proposals: Sequence[Tensor], targets: Sequence[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], Tensor]:
        """Append GT boxes, match, sample. Returns per image the sampled RoIs, their matched
        GT indices and labels, and the regression targets of all sampled RoIs ``[R, 4]``."""
        dtype = proposals[0].dtype
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        # GT boxes as extra proposals (Mask R-CNN sec. 3.1; Detectron's default)
        proposals = [torch.cat([p, g]) for p, g in zip(proposals, gt_boxes, strict=True)]
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        pos, neg = self.fg_bg_sampler(labels)
        matched_gt_boxes = []
        for i in range(len(proposals)):
            # sorted indices of the sampled RoIs (positives and negatives interleaved)
            keep = torch.cat([pos[i], neg[i]]).sort().values
            proposals[i], labels[i] = proposals[i][keep], labels[i][keep]
            matched_idxs[i] = matched_idxs[i][keep]
            boxes = gt_boxes[i] if gt_boxes[i].numel() else proposals[i].new_zeros((1, 4))
            matched_gt_boxes.append(boxes[matched_idxs[i]])
        regression_targets = self.box_coder.encode(
            torch.cat(matched_gt_boxes), torch.cat(proposals)
        )
        return proposals, matched_idxs, labels, regression_targets

    # --- inference ---------------------------------------------------------------------------

    def postprocess_detections(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: Sequence[Tensor],
        image_sizes: Sequence[Sequence[int]],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per image: boxes ``[D, 4]``, scores ``[D]``, labels ``[D]`` (D <= detections_per_img).

        Every (proposal, foreground class) pair is a candidate detection with that class's
        decoded box and softmax score.
        """
        num_classes = class_logits.shape[-1]
        pred_boxes = self.box_coder.decode(box_regression, torch.cat(list(proposals)))
        pred_scores = F.softmax(class_logits, -1)
        counts = [len(p) for p in proposals]
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, size in zip(
            pred_boxes.split(counts), pred_scores.split(counts), image_sizes, strict=True
        ):
            boxes = clip_boxes_to_image(boxes, size)
            labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(scores)
            # drop the background class, then one candidate per (proposal, class)
            boxes = boxes[:, 1:].reshape(-1, 4)
            scores = scores[:, 1:].reshape(-1)
            labels = labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            # NMS per class: different classes do not suppress each other
            keep = self.parts.batched_nms(boxes, scores, labels, self.nms_thresh)[
                : self.detections_per_img
            ]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels

    # --- both ----------------------------------------------------------------------------------

    def forward(
        self,
        features: Mapping[str, Tensor],
        proposals: Sequence[Tensor],
        image_size: Sequence[int],
        image_sizes: Sequence[Sequence[int]],
        targets: Sequence[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """``features`` (P2..P6 by name), ``proposals`` per image, ``image_size`` (the padded
        batch's H, W), ``image_sizes`` (unpadded, per image) -> (detections, losses).

        The poolers infer each level's scale from ``image_size``: the padded size is an exact
        multiple of every stride (torchvision infers it from the largest unpadded image, which
        agrees except on images a few tens of pixels small)."""
        if self.training:
            if targets is None:
                raise ValueError("the RoI heads need targets in training mode")
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
                proposals, targets
            )

        box_features = self.box_head(self.box_roi_pool(features, proposals, [image_size]))
        class_logits, box_regression = self.box_predictor(box_features)

        result: list[dict[str, Tensor]] = []
        losses: dict[str, Tensor] = {}
        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(
                class_logits,
                box_regression,
                torch.cat(labels),
                regression_targets,
                beta=self.box_smooth_l1_beta,
            )
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
            # the mask branch trains on the positive RoIs only
            pos = [torch.where(lab > 0)[0] for lab in labels]
            mask_proposals = [p[i] for p, i in zip(proposals, pos, strict=True)]
            pos_matched_idxs = [m[i] for m, i in zip(matched_idxs, pos, strict=True)]
        else:
            boxes, scores, det_labels = self.postprocess_detections(
                class_logits, box_regression, proposals, image_sizes
            )
            result = [
                {"boxes": b, "labels": lab, "scores": s}
                for b, s, lab in zip(boxes, scores, det_labels, strict=True)
            ]
            mask_proposals = boxes

        mask_features = self.mask_head(self.mask_roi_pool(features, mask_proposals, [image_size]))
        mask_logits = self.mask_predictor(mask_features)
        if self.training:
            losses["loss_mask"] = maskrcnn_loss(
                mask_logits,
                mask_proposals,
                [t["masks"] for t in targets],
                [t["labels"] for t in targets],
                pos_matched_idxs,
                mode=self.mask_loss,
                binarize_targets=self.binarize_mask_targets,
                mask_targets=self.parts.mask_targets,
                loss_fn=self.parts.mask_loss_for(self.mask_loss),
            )
        else:
            probs = maskrcnn_inference(mask_logits, [r["labels"] for r in result], self.mask_loss)
            for r, p in zip(result, probs, strict=True):
                r["masks"] = p
        return result, losses
