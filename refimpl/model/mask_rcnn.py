"""Mask R-CNN (He et al. 2017): Faster R-CNN with a mask branch in parallel to the box branch.

``transform -> backbone (ResNet + FPN, P2..P6) -> RPN -> RoI heads (box, mask) -> postprocess``

:class:`MaskRCNN` takes torchvision's constructor keywords for every hyperparameter the two
share (``min_size``, ``rpn_*``, ``box_*``, ``bbox_reg_weights``, ...), with torchvision's
defaults, so that ``maskrcnn_resnet50_fpn(num_classes=91)`` is torchvision's v1 model (and
loads its weights: :mod:`refimpl.model.torchvision_weights`). Our own options select the
backbone, the widths, the RoI operator and the mask loss for the paper's ablations (Table 2).

``model(images, targets)`` in training mode returns the five losses
``loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg, loss_mask`` (to be summed
with weight 1); in eval mode, per image, ``boxes [D, 4]``, ``labels [D]``, ``scores [D]`` and
``masks [D, 1, H, W]`` (probabilities in the original image size; threshold at 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .anchors import AnchorGenerator
from .backbone import freeze_layers, norm_layer_for, resnet50, resnet_small
from .box_head import FastRCNNPredictor, TwoMLPHead
from .fpn import BackboneWithFPN
from .losses import MASK_LOSSES
from .mask_head import MaskRCNNHeads, MaskRCNNPredictor
from .poolers import fpn_roi_pooler
from .roi_heads import RoIHeads
from .rpn import RegionProposalNetwork, RPNHead
from .transform import IMAGENET_MEAN, IMAGENET_STD, GeneralizedRCNNTransform

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")
BACKBONES = ("resnet50", "resnet18", "small")


def build_backbone(
    name: str, fpn_channels: int, width: int, norm: str, bn_eps: float | None
) -> BackboneWithFPN:
    """``"resnet50"`` (the paper's), ``"resnet18"``, or ``"small"`` (ResNet-18's layout at
    ``width`` channels in the stem: 32 is half of ResNet-18), each with an FPN."""
    norm_layer = norm_layer_for(norm, bn_eps)
    if name == "resnet50":
        body = resnet50(norm_layer)
    elif name == "resnet18":
        body = resnet_small(64, norm_layer=norm_layer)
    elif name == "small":
        body = resnet_small(width, norm_layer=norm_layer)
    else:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    return BackboneWithFPN(body, body.out_channels, fpn_channels)


class MaskRCNN(nn.Module):
    """Mask R-CNN. Every argument but ``num_classes`` is keyword-only.

    Args (torchvision's names and defaults):
        num_classes: including the background (label 0).
        min_size, max_size, image_mean, image_std: the transform (800, 1333, ImageNet).
        rpn_pre_nms_top_n_train/test (2000/1000, per level), rpn_post_nms_top_n_train/test
            (2000/1000, per image), rpn_nms_thresh (0.7), rpn_fg_iou_thresh (0.7),
            rpn_bg_iou_thresh (0.3), rpn_batch_size_per_image (256),
            rpn_positive_fraction (0.5), rpn_score_thresh (0.0): the RPN.
        box_score_thresh (0.05), box_nms_thresh (0.5), box_detections_per_img (100),
            box_fg_iou_thresh (0.5), box_bg_iou_thresh (0.5), box_batch_size_per_image (512),
            box_positive_fraction (0.25), bbox_reg_weights (None: 10, 10, 5, 5): the box head.

    Args (ours):
        backbone: ``"resnet50"`` | ``"resnet18"`` | ``"small"``.
        backbone_width: the stem width of ``"small"`` (32).
        norm: ``"bn"`` (BatchNorm2d, training from scratch) | ``"frozen"``
            (FrozenBatchNorm2d, fine-tuning pretrained weights).
        bn_eps: BatchNorm's epsilon (None: 1e-5; torchvision's COCO weights use 0.0).
        trainable_backbone_layers: 0..5, see :func:`~refimpl.model.backbone.freeze_layers`.
        fpn_channels: the pyramid's width (256).
        size_divisible: the batch is padded to a multiple of this (32).
        anchor_sizes: one per level P2..P6 (32, 64, 128, 256, 512); aspect_ratios (h / w).
        representation_size: the box head's fc width (1024).
        mask_layers: the mask head's conv widths (None: 4 x ``fpn_channels``).
        mask_dim_reduced: the deconvolution's width (None: ``mask_layers[-1]``).
        roi_op: ``"align"`` | ``"warp"`` | ``"pool"`` (Table 2c).
        roi_pool_mode: ``"avg"`` | ``"max"`` (align and warp).
        aligned: RoIAlign's half-pixel offset (False: the paper, torchvision).
        sampling_ratio: samples per bin and axis (2; <= 0: adaptive).
        canonical_scale, canonical_level: FPN eq. 1's 224 and 4.
        box_roi_output_size, mask_roi_output_size: 7 and 14.
        mask_loss: ``"sigmoid"`` | ``"softmax"`` | ``"agnostic"`` (Table 2b).
        rpn_smooth_l1_beta, box_smooth_l1_beta: 1/9 (0: L1, detectron2).
        binarize_mask_targets: threshold the mask targets at 0.5 (detectron2).
    """

    def __init__(
        self,
        num_classes: int = 91,
        *,
        min_size: int | Sequence[int] = 800,
        max_size: int = 1333,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_nms_thresh: float = 0.7,
        rpn_fg_iou_thresh: float = 0.7,
        rpn_bg_iou_thresh: float = 0.3,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        rpn_score_thresh: float = 0.0,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        box_detections_per_img: int = 100,
        box_fg_iou_thresh: float = 0.5,
        box_bg_iou_thresh: float = 0.5,
        box_batch_size_per_image: int = 512,
        box_positive_fraction: float = 0.25,
        bbox_reg_weights: Sequence[float] | None = None,
        # --- ours ---
        backbone: str = "resnet50",
        backbone_width: int = 32,
        norm: str = "bn",
        bn_eps: float | None = None,
        trainable_backbone_layers: int = 5,
        fpn_channels: int = 256,
        size_divisible: int = 32,
        anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        representation_size: int = 1024,
        mask_layers: Sequence[int] | None = None,
        mask_dim_reduced: int | None = None,
        roi_op: str = "align",
        roi_pool_mode: str = "avg",
        aligned: bool = False,
        sampling_ratio: int = 2,
        canonical_scale: float = 224,
        canonical_level: int = 4,
        box_roi_output_size: int = 7,
        mask_roi_output_size: int = 14,
        mask_loss: str = "sigmoid",
        rpn_smooth_l1_beta: float = 1 / 9,
        box_smooth_l1_beta: float = 1 / 9,
        binarize_mask_targets: bool = False,
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background: need >= 2, got {num_classes}")
        if mask_loss not in MASK_LOSSES:
            raise ValueError(f"mask_loss must be one of {MASK_LOSSES}, got {mask_loss!r}")
        self.num_classes = num_classes

        self.transform = GeneralizedRCNNTransform(
            min_size,
            max_size,
            IMAGENET_MEAN if image_mean is None else image_mean,
            IMAGENET_STD if image_std is None else image_std,
            size_divisible,
        )

        self.backbone = build_backbone(backbone, fpn_channels, backbone_width, norm, bn_eps)
        freeze_layers(self.backbone.body, trainable_backbone_layers)

        anchor_generator = AnchorGenerator(
            tuple((s,) for s in anchor_sizes), (tuple(aspect_ratios),) * len(anchor_sizes)
        )
        self.rpn = RegionProposalNetwork(
            anchor_generator,
            RPNHead(fpn_channels, anchor_generator.num_anchors_per_location()[0]),
            rpn_fg_iou_thresh,
            rpn_bg_iou_thresh,
            rpn_batch_size_per_image,
            rpn_positive_fraction,
            {"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
            {"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test},
            rpn_nms_thresh,
            score_thresh=rpn_score_thresh,
            smooth_l1_beta=rpn_smooth_l1_beta,
        )

        def pooler(output_size: int):
            return fpn_roi_pooler(
                output_size,
                sampling_ratio,
                canonical_scale,
                canonical_level,
                roi_op=roi_op,
                pool_mode=roi_pool_mode,
                aligned=aligned,
            )

        mask_layers = tuple(mask_layers) if mask_layers is not None else (fpn_channels,) * 4
        mask_dim_reduced = mask_dim_reduced if mask_dim_reduced is not None else mask_layers[-1]
        self.roi_heads = RoIHeads(
            box_roi_pool=pooler(box_roi_output_size),
            box_head=TwoMLPHead(fpn_channels * box_roi_output_size**2, representation_size),
            box_predictor=FastRCNNPredictor(representation_size, num_classes),
            fg_iou_thresh=box_fg_iou_thresh,
            bg_iou_thresh=box_bg_iou_thresh,
            batch_size_per_image=box_batch_size_per_image,
            positive_fraction=box_positive_fraction,
            bbox_reg_weights=bbox_reg_weights,
            score_thresh=box_score_thresh,
            nms_thresh=box_nms_thresh,
            detections_per_img=box_detections_per_img,
            mask_roi_pool=pooler(mask_roi_output_size),
            mask_head=MaskRCNNHeads(fpn_channels, mask_layers),
            mask_predictor=MaskRCNNPredictor(
                mask_layers[-1], mask_dim_reduced, 1 if mask_loss == "agnostic" else num_classes
            ),
            mask_loss=mask_loss,
            box_smooth_l1_beta=box_smooth_l1_beta,
            binarize_mask_targets=binarize_mask_targets,
        )

    def set_sampling(
        self, deterministic: bool = False, generator: torch.Generator | None = None
    ) -> None:
        """How the RPN and the RoI heads sample their training examples: at random (from
        ``generator``, or torch's global RNG as torchvision), or ``deterministic`` (the first
        positives and negatives: reproducible losses for tests)."""
        for sampler in (self.rpn.fg_bg_sampler, self.roi_heads.fg_bg_sampler):
            sampler.deterministic = deterministic
            sampler.generator = generator

    def _check_targets(self, images: Sequence[Tensor], targets) -> None:
        if targets is None:
            raise ValueError("targets are required in training mode")
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        for i, (img, t) in enumerate(zip(images, targets, strict=True)):
            for key in ("boxes", "labels", "masks"):
                if key not in t:
                    raise ValueError(f"targets[{i}] has no {key!r}")
            boxes, labels, masks = t["boxes"], t["labels"], t["masks"]
            if not boxes.is_floating_point() or boxes.dim() != 2 or boxes.shape[1] != 4:
                raise ValueError(f"targets[{i}]['boxes'] must be a float [N, 4] tensor")
            if labels.dtype != torch.int64 or labels.shape != boxes.shape[:1]:
                raise ValueError(f"targets[{i}]['labels'] must be int64 [N], one per box")
            if masks.shape != (boxes.shape[0], *img.shape[-2:]):
                raise ValueError(
                    f"targets[{i}]['masks'] must be [N, H, W] = "
                    f"{[boxes.shape[0], *img.shape[-2:]]}, got {list(masks.shape)}"
                )
            if labels.numel() and (labels.min() < 1 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"targets[{i}]['labels'] must be in [1, {self.num_classes - 1}] "
                    "(0 is the background)"
                )
            bad = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
            if bad.any():
                raise ValueError(
                    f"targets[{i}] has a box without positive width and height: "
                    f"{boxes[bad][0].tolist()}"
                )

    def forward(
        self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """``images``: list of ``[3, H, W]`` RGB in [0, 1] (sizes may differ). ``targets``
        (training): per image ``boxes [N, 4]`` float (x1, y1, x2, y2) in pixels, ``labels [N]``
        int64 in ``[1, num_classes)``, ``masks [N, H, W]`` (uint8 or float in {0, 1})."""
        if self.training:
            self._check_targets(images, targets)
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, targets = self.transform(images, targets)
        batch_size = image_list.tensors.shape[-2:]
        features = self.backbone(image_list.tensors)
        proposals, rpn_losses = self.rpn(batch_size, image_list.image_sizes, features, targets)
        detections, head_losses = self.roi_heads(
            features, proposals, batch_size, image_list.image_sizes, targets
        )
        if self.training:
            losses = {**rpn_losses, **head_losses}
            return {name: losses[name] for name in LOSS_NAMES}
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)


def maskrcnn_resnet50_fpn(num_classes: int = 91, **kwargs) -> MaskRCNN:
    """torchvision's ``maskrcnn_resnet50_fpn`` (v1): ResNet-50-FPN, every default as there."""
    return MaskRCNN(num_classes, backbone="resnet50", **kwargs)


# CPU training on 128x128 images (the synthetic shapes): everything scaled down about 4-6x.
SMALL_DEFAULTS: dict = {
    "min_size": 128,
    "max_size": 128,
    "backbone": "small",
    "backbone_width": 32,  # half of ResNet-18
    "fpn_channels": 64,
    "anchor_sizes": (8, 16, 32, 64, 128),  # the paper's 32..512 divided by 4
    "canonical_scale": 56,  # 224 / 4: objects of 40-64 px pool from P3 and P4
    "representation_size": 256,
    "rpn_pre_nms_top_n_train": 600,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_train": 300,
    "rpn_post_nms_top_n_test": 100,
    "box_batch_size_per_image": 128,
    "box_detections_per_img": 50,
}


def maskrcnn_small(num_classes: int, **kwargs) -> MaskRCNN:
    """A CPU-sized Mask R-CNN for 128x128 images: ResNet-18 layout at half width, a 64-channel
    FPN, anchors 8..128, canonical RoI size 56, fewer proposals. ``kwargs`` override
    :data:`SMALL_DEFAULTS` and any :class:`MaskRCNN` argument."""
    return MaskRCNN(num_classes, **{**SMALL_DEFAULTS, **kwargs})
