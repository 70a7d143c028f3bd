"""The five training losses of Mask R-CNN, each summed with weight 1 (Mask R-CNN sec. 3):

``L = L_cls + L_box + L_mask`` on the sampled RoIs, plus the RPN's two losses (Faster R-CNN
sec. 3.1.2, eq. 1):

==================== =========================================================================
``loss_objectness``  binary cross-entropy of the sampled anchors' objectness logits (mean)
``loss_rpn_box_reg`` smooth L1 (beta 1/9) of the positive anchors' deltas, / #sampled anchors
``loss_classifier``  cross-entropy of the sampled RoIs' class logits (mean)
``loss_box_reg``     smooth L1 (beta 1/9) of the GT class's deltas of positive RoIs,
                     / #sampled RoIs
``loss_mask``        per-pixel binary cross-entropy of the GT class's 28x28 mask logits on the
                     positive RoIs (mean); targets are the GT masks cropped by RoIAlign
==================== =========================================================================

Normalizing the regression sums by the number of SAMPLED examples (not of positives) is
torchvision's choice (and Detectron's): the balance of the two terms then does not change with
the number of positives. Mask-loss variants (Mask R-CNN Table 2b): ``"sigmoid"`` (the paper's
per-class sigmoid, default), ``"softmax"`` (a per-pixel softmax over classes: the FCN-style
multinomial loss that couples masks and classes, 5.5 AP worse in the paper) and
``"agnostic"`` (one mask per RoI whatever its class, about as good as per-class in the paper).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from refimpl.ops import roi_align

RoIOp = Callable[..., Tensor]  # torchvision.ops.roi_align's signature

MASK_LOSSES = ("sigmoid", "softmax", "agnostic")


def rpn_loss(
    objectness: Tensor,
    pred_bbox_deltas: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    sampled_pos_inds: Tensor,
    sampled_neg_inds: Tensor,
    beta: float = 1 / 9,
) -> tuple[Tensor, Tensor]:
    """The RPN losses (Faster R-CNN eq. 1) over the sampled anchors of the whole batch.

    Args:
        objectness: ``[A]`` logits of all anchors of all images.
        pred_bbox_deltas: ``[A, 4]``.
        labels: ``[A]`` float, 1 object / 0 background / -1 ignored.
        regression_targets: ``[A, 4]`` encoded GT boxes (RPN weights 1, 1, 1, 1).
        sampled_pos_inds, sampled_neg_inds: indices into the ``A`` anchors.
        beta: smooth L1's transition point (1/9; 0 gives L1, as in detectron2).

    Returns:
        ``(loss_objectness, loss_rpn_box_reg)``.
    """
    sampled_inds = torch.cat([sampled_pos_inds, sampled_neg_inds])
    box_loss = (
        F.smooth_l1_loss(
            pred_bbox_deltas[sampled_pos_inds],
            regression_targets[sampled_pos_inds],
            beta=beta,
            reduction="sum",
        )
        / sampled_inds.numel()
    )
    objectness_loss = F.binary_cross_entropy_with_logits(
        objectness[sampled_inds], labels[sampled_inds]
    )
    return objectness_loss, box_loss


def fastrcnn_loss(
    class_logits: Tensor,
    box_regression: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    beta: float = 1 / 9,
) -> tuple[Tensor, Tensor]:
    """The box head's losses (Fast R-CNN sec. 2.3, eq. 1) over the sampled RoIs.

    Args:
        class_logits: ``[R, num_classes]``.
        box_regression: ``[R, num_classes * 4]``: class-specific deltas.
        labels: ``[R]`` int64 class labels (0 is background).
        regression_targets: ``[R, 4]`` encoded matched GT boxes (weights 10, 10, 5, 5).
        beta: smooth L1's transition point.

    Returns:
        ``(loss_classifier, loss_box_reg)``: only the GT class's deltas of the positive RoIs
        are regressed (Fast R-CNN's ``[u >= 1]`` Iverson bracket).
    """
    classification_loss = F.cross_entropy(class_logits, labels)
    pos = torch.where(labels > 0)[0]
    box_regression = box_regression.reshape(box_regression.shape[0], -1, 4)
    box_loss = (
        F.smooth_l1_loss(
            box_regression[pos, labels[pos]], regression_targets[pos], beta=beta, reduction="sum"
        )
        / labels.numel()
    )
    return classification_loss, box_loss


def project_masks_on_boxes(
    gt_masks: Tensor,
    boxes: Tensor,
    matched_idxs: Tensor,
    resolution: int,
    roi_align: RoIOp = roi_align,
) -> Tensor:
    """The mask targets (Mask R-CNN sec. 3.1, "Mask"): each RoI's matched GT mask, cropped to
    the RoI and resampled to ``resolution x resolution`` by RoIAlign (scale 1, adaptive
    sampling, ``aligned=False``), so that the target is aligned with the RoI exactly as the
    predicted mask is. The result is soft (fractions in [0, 1]), not thresholded. The part
    ``Parts.mask_targets`` (exercise 12's ``mask_targets``).

    Args:
        gt_masks: ``[G, H, W]`` (any dtype) GT masks of one image.
        boxes: ``[R, 4]`` the RoIs.
        matched_idxs: ``[R]`` int64, the GT index of each RoI.
        resolution: ``M`` (28).
        roi_align: the RoI operator (``torchvision.ops.roi_align``'s signature): refimpl's, or
            the part ``Parts.roi_align``.

    Returns:
        ``[R, M, M]`` in the boxes' dtype.
    """
    if boxes.shape[0] == 0:  # e.g. an image without objects: no RoIs, and maybe no masks
        return boxes.new_zeros((0, resolution, resolution))
    rois = torch.cat([matched_idxs.to(boxes)[:, None], boxes], dim=1)
    masks = gt_masks[:, None].to(rois)
    return roi_align(masks, rois, (resolution, resolution), 1.0, -1, False)[:, 0]


def sigmoid_mask_loss(mask_logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """The paper's per-class sigmoid: BCE on the GT class's channel only (no competition among
    classes), mean over RoIs and pixels. ``mask_logits [R, C, M, M]``, ``labels [R]``,
    ``targets [R, M, M]``. The part ``Parts.mask_loss`` (exercise 12's ``mask_loss``)."""
    rois = torch.arange(labels.shape[0], device=labels.device)
    return F.binary_cross_entropy_with_logits(mask_logits[rois, labels], targets)


def softmax_mask_loss(mask_logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Table 2b's alternative: a per-pixel softmax over the classes, target the GT class inside
    the mask and background (channel 0) outside (soft targets ``t``:
    ``-(t log p_gt + (1 - t) log p_0)``), mean over RoIs and pixels."""
    rois = torch.arange(labels.shape[0], device=labels.device)
    log_p = F.log_softmax(mask_logits, dim=1)
    return -(targets * log_p[rois, labels] + (1 - targets) * log_p[:, 0]).mean()


def agnostic_mask_loss(mask_logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """One mask per RoI whatever its class: BCE on the single channel (``labels`` unused but
    checked: one per RoI)."""
    if labels.shape[0] != mask_logits.shape[0]:
        raise ValueError(f"{mask_logits.shape[0]} RoIs but {labels.shape[0]} labels")
    return F.binary_cross_entropy_with_logits(mask_logits[:, 0], targets)


MASK_LOSS_FUNCTIONS = {
    "sigmoid": sigmoid_mask_loss,
    "softmax": softmax_mask_loss,
    "agnostic": agnostic_mask_loss,
}
MaskTargetsFn = Callable[[Tensor, Tensor, Tensor, int], Tensor]
MaskLossFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def maskrcnn_loss(
    mask_logits: Tensor,
    proposals: list[Tensor],
    gt_masks: list[Tensor],
    gt_labels: list[Tensor],
    mask_matched_idxs: list[Tensor],
    mode: str = "sigmoid",
    binarize_targets: bool = False,
    *,
    mask_targets: MaskTargetsFn = project_masks_on_boxes,
    loss_fn: MaskLossFn | None = None,
) -> Tensor:
    """The mask loss ``L_mask`` (Mask R-CNN sec. 3) over the positive RoIs.

    Args:
        mask_logits: ``[R, C, M, M]`` (``C`` = num_classes; 1 for ``"agnostic"``).
        proposals: per image, the positive RoIs ``[R_i, 4]``.
        gt_masks: per image, ``[G_i, H, W]``.
        gt_labels: per image, ``[G_i]`` int64.
        mask_matched_idxs: per image, ``[R_i]`` the matched GT index of each RoI.
        mode: ``"sigmoid"`` | ``"softmax"`` | ``"agnostic"``: :func:`sigmoid_mask_loss`,
            :func:`softmax_mask_loss`, :func:`agnostic_mask_loss`.
        binarize_targets: threshold the targets at 0.5 (detectron2) instead of soft targets.
        mask_targets: the targets of one image (:func:`project_masks_on_boxes`' signature).
        loss_fn: ``(mask_logits, labels, targets) -> scalar``; None: the one ``mode`` names.

    Returns:
        A scalar: the mean over RoIs and pixels (0, still connected to the graph, when there
        are no positive RoIs).
    """
    if mode not in MASK_LOSSES:
        raise ValueError(f"mode must be one of {MASK_LOSSES}, got {mode!r}")
    resolution = mask_logits.shape[-1]
    labels = torch.cat([lab[idx] for lab, idx in zip(gt_labels, mask_matched_idxs, strict=True)])
    targets = torch.cat(
        [
            mask_targets(m, p, i, resolution)
            for m, p, i in zip(gt_masks, proposals, mask_matched_idxs, strict=True)
        ]
    )
    if targets.numel() == 0:
        # the mean of nothing is NaN: return a zero that keeps the graph (and DDP) intact
        return mask_logits.sum() * 0
    if binarize_targets:
        targets = (targets >= 0.5).to(targets.dtype)
    return (loss_fn or MASK_LOSS_FUNCTIONS[mode])(mask_logits, labels, targets)
