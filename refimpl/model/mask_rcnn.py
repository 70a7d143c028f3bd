"""Mask R-CNN (He et al. 2017): Faster R-CNN with a mask branch in parallel to the box branch.

``transform -> backbone (ResNet + FPN, P2..P6) -> RPN -> RoI heads (box, mask) -> postprocess``

:class:`MaskRCNN` is torchvision's class: it takes the backbone as an ``nn.Module`` (with an
``out_channels`` attribute), optionally the modules torchvision takes (``rpn_anchor_generator``,
``rpn_head``, ``box_roi_pool``, ``box_head``, ``box_predictor``, ``mask_roi_pool``,
``mask_head``, ``mask_predictor``), and torchvision's keywords for every hyperparameter the two
share (``min_size``, ``rpn_*``, ``box_*``, ``bbox_reg_weights``), with torchvision's defaults.
Ours in addition: ``parts`` (:class:`~refimpl.model.parts.Parts`: the learner's RoI operator,
NMS, box coding, ... plug in there), ``mask_loss`` (Table 2b) and two detectron2 variants.

The builders make the whole model from options: :func:`maskrcnn_resnet50_fpn` is torchvision's
v1 model (and loads its weights: :mod:`refimpl.model.torchvision_weights`),
:func:`maskrcnn_small` the CPU-sized one, both through :func:`maskrcnn_fpn`, which also takes
the paper's ablations (``roi_op``, ``roi_pool_mode``, ``aligned``, ``sampling_ratio``: Table 2c)
and the widths.

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
from .box_head import FastRCNNPredictor, TwoMLPHead
from .fpn import BACKBONES, resnet_fpn_backbone
from .losses import MASK_LOSSES
from .mask_head import MaskRCNNHeads, MaskRCNNPredictor
from .parts import Parts
from .poolers import POOLED_LEVELS, MultiLevelRoIPooler, fpn_roi_pooler
from .roi_heads import RoIHeads
from .rpn import RegionProposalNetwork, RPNHead
from .transform import IMAGENET_MEAN, IMAGENET_STD, GeneralizedRCNNTransform

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")

__all__ = [
    "BACKBONES",
    "LOSS_NAMES",
    "SMALL_DEFAULTS",
    "MaskRCNN",
    "maskrcnn_fpn",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_small",
]


class MaskRCNN(nn.Module):
    """Mask R-CNN. Every argument but ``backbone`` and ``num_classes`` is keyword-only.

    Args (torchvision's names and defaults):
        backbone: an ``nn.Module`` returning a dict of feature maps ``p2..p6`` (P2..P5 are
            pooled from, all levels feed the RPN), with an ``out_channels`` attribute, e.g.
            :func:`~refimpl.model.fpn.resnet_fpn_backbone`.
        num_classes: including the background (label 0); None when ``box_predictor`` is given.
        min_size, max_size, image_mean, image_std: the transform (800, 1333, ImageNet);
            size_divisible: the batch is padded to a multiple of this (32).
        rpn_anchor_generator (sizes 32..512 on P2..P6, ratios 0.5, 1, 2), rpn_head: modules.
        rpn_pre_nms_top_n_train/test (2000/1000, per level), rpn_post_nms_top_n_train/test
            (2000/1000, per image), rpn_nms_thresh (0.7), rpn_fg_iou_thresh (0.7),
            rpn_bg_iou_thresh (0.3), rpn_batch_size_per_image (256),
            rpn_positive_fraction (0.5), rpn_score_thresh (0.0): the RPN.
        box_roi_pool (RoIAlign 7x7, sampling 2, over P2..P5), box_head (2 fc of 1024),
            box_predictor: modules.
        box_score_thresh (0.05), box_nms_thresh (0.5), box_detections_per_img (100),
            box_fg_iou_thresh (0.5), box_bg_iou_thresh (0.5), box_batch_size_per_image (512),
            box_positive_fraction (0.25), bbox_reg_weights (None: 10, 10, 5, 5): the box head.
        mask_roi_pool (RoIAlign 14x14), mask_head (4 convs of 256), mask_predictor: modules.

    Args (ours):
        parts: the replaceable parts (:class:`~refimpl.model.parts.Parts`, validated here;
            None: refimpl's). The default modules use them (the anchor generator its anchors,
            the poolers its ``roi_align`` and ``fpn_level``); modules given are used as given.
        mask_loss: ``"sigmoid"`` | ``"softmax"`` | ``"agnostic"`` (Table 2b; agnostic: one
            mask channel).
        rpn_smooth_l1_beta, box_smooth_l1_beta: 1/9 (0: L1, detectron2).
        binarize_mask_targets: threshold the mask targets at 0.5 (detectron2).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        *,
        min_size: int | Sequence[int] = 800,
        max_size: int = 1333,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        size_divisible: int = 32,
        rpn_anchor_generator: AnchorGenerator | None = None,
        rpn_head: nn.Module | None = None,
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
        box_roi_pool: nn.Module | None = None,
        box_head: nn.Module | None = None,
        box_predictor: nn.Module | None = None,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        box_detections_per_img: int = 100,
        box_fg_iou_thresh: float = 0.5,
        box_bg_iou_thresh: float = 0.5,
        box_batch_size_per_image: int = 512,
        box_positive_fraction: float = 0.25,
        bbox_reg_weights: Sequence[float] | None = None,
        mask_roi_pool: nn.Module | None = None,
        mask_head: nn.Module | None = None,
        mask_predictor: nn.Module | None = None,
        # --- ours ---
        parts: Parts | None = None,
        mask_loss: str = "sigmoid",
        rpn_smooth_l1_beta: float = 1 / 9,
        box_smooth_l1_beta: float = 1 / 9,
        binarize_mask_targets: bool = False,
    ):
        super().__init__()
        num_classes = _check_arguments(backbone, num_classes, box_predictor, mask_loss)
        self.num_classes = num_classes
        self.parts = (parts or Parts()).validate()
        channels = backbone.out_channels

        self.transform = GeneralizedRCNNTransform(
            min_size,
            max_size,
            IMAGENET_MEAN if image_mean is None else image_mean,
            IMAGENET_STD if image_std is None else image_std,
            size_divisible,
            paste_masks=self.parts.paste_masks,
        )
        self.backbone = backbone

        if rpn_anchor_generator is None:
            rpn_anchor_generator = AnchorGenerator(
                ((32,), (64,), (128,), (256,), (512,)),
                ((0.5, 1.0, 2.0),) * 5,
                anchors_fn=self.parts.anchors,
            )
        if rpn_head is None:
            rpn_head = RPNHead(channels, rpn_anchor_generator.num_anchors_per_location()[0])
        self.rpn = RegionProposalNetwork(
            rpn_anchor_generator,
            rpn_head,
            rpn_fg_iou_thresh,
            rpn_bg_iou_thresh,
            rpn_batch_size_per_image,
            rpn_positive_fraction,
            {"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
            {"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test},
            rpn_nms_thresh,
            score_thresh=rpn_score_thresh,
            smooth_l1_beta=rpn_smooth_l1_beta,
            parts=self.parts,
        )

        if box_roi_pool is None:
            box_roi_pool = self._pooler(7)
        if box_head is None:
            box_head = TwoMLPHead(channels * 7 * 7, 1024)
        if box_predictor is None:
            box_predictor = FastRCNNPredictor(1024, num_classes)
        if mask_roi_pool is None:
            mask_roi_pool = self._pooler(14)
        if mask_head is None:
            mask_head = MaskRCNNHeads(channels, (256, 256, 256, 256))
        if mask_predictor is None:
            classes = 1 if mask_loss == "agnostic" else num_classes
            mask_predictor = MaskRCNNPredictor(256, 256, classes)
        self.roi_heads = RoIHeads(
            box_roi_pool=box_roi_pool,
            box_head=box_head,
            box_predictor=box_predictor,
            fg_iou_thresh=box_fg_iou_thresh,
            bg_iou_thresh=box_bg_iou_thresh,
            batch_size_per_image=box_batch_size_per_image,
            positive_fraction=box_positive_fraction,
            bbox_reg_weights=bbox_reg_weights,
            score_thresh=box_score_thresh,
            nms_thresh=box_nms_thresh,
            detections_per_img=box_detections_per_img,
            mask_roi_pool=mask_roi_pool,
            mask_head=mask_head,
            mask_predictor=mask_predictor,
            mask_loss=mask_loss,
            box_smooth_l1_beta=box_smooth_l1_beta,
            binarize_mask_targets=binarize_mask_targets,
            parts=self.parts,
        )

    def _pooler(self, output_size: int) -> MultiLevelRoIPooler:
        """torchvision's default poolers (sampling 2, not aligned) with the parts' RoI op."""
        return MultiLevelRoIPooler(
            POOLED_LEVELS,
            output_size,
            self.parts.roi_align,
            sampling_ratio=2,
            fpn_level=self.parts.fpn_level,
        )

    def set_sampling(
        self, deterministic: bool = False, generator: torch.Generator | None = None
    ) -> None:
        """How the RPN and the RoI heads sample their training examples: at random (from
        ``generator``, or torch's global RNG as torchvision), or ``deterministic`` (the first
        positives and negatives: reproducible losses for tests; refimpl's sampler only)."""
        if deterministic and self.parts.is_given("sampler"):
            raise ValueError(
                "deterministic sampling is refimpl's sampler's: with parts.sampler, seed a "
                "generator instead (set_sampling(generator=torch.Generator().manual_seed(0)))"
            )
        for sampler in (self.rpn.fg_bg_sampler, self.roi_heads.fg_bg_sampler):
            sampler.deterministic = deterministic
            sampler.generator = generator

    def _check_targets(self, images: Sequence[Tensor], targets) -> None:
        if targets is None:
            raise ValueError("targets are required in training mode")
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        for i, (img, t) in enumerate(zip(images, targets, strict=True)):
            _check_target(f"targets[{i}]", t, tuple(img.shape[-2:]), self.num_classes)

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


def _check_target(name: str, t: dict, size: tuple[int, int], num_classes: int) -> None:
    """One image's target: float boxes [N, 4] of positive size, int64 labels in [1, K), masks
    [N, H, W] of the image's size; a ValueError naming the first problem."""
    for key in ("boxes", "labels", "masks"):
        if key not in t:
            raise ValueError(f"{name} has no {key!r}")
    boxes, labels, masks = t["boxes"], t["labels"], t["masks"]
    if not boxes.is_floating_point() or boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name}['boxes'] must be a float [N, 4] tensor")
    if labels.dtype != torch.int64 or labels.shape != boxes.shape[:1]:
        raise ValueError(f"{name}['labels'] must be int64 [N], one per box")
    if masks.shape != (boxes.shape[0], *size):
        raise ValueError(
            f"{name}['masks'] must be [N, H, W] = {[boxes.shape[0], *size]}, "
            f"got {list(masks.shape)}"
        )
    if labels.numel() and (labels.min() < 1 or labels.max() >= num_classes):
        raise ValueError(
            f"{name}['labels'] must be in [1, {num_classes - 1}] (0 is the background)"
        )
    bad = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
    if bad.any():
        raise ValueError(
            f"{name} has a box without positive width and height: {boxes[bad][0].tolist()}"
        )


def _check_arguments(
    backbone: nn.Module, num_classes: int | None, box_predictor: nn.Module | None, mask_loss: str
) -> int:
    """torchvision's rules: a backbone module with ``out_channels``; ``num_classes`` exactly
    when there is no ``box_predictor``. Returns the number of classes."""
    if isinstance(backbone, str):
        raise TypeError(
            f"backbone is an nn.Module (as in torchvision), got the string {backbone!r}: use "
            f"resnet_fpn_backbone({backbone!r}) or a builder (maskrcnn_fpn(num_classes, "
            f"backbone={backbone!r}))"
        )
    if not isinstance(backbone, nn.Module) or not hasattr(backbone, "out_channels"):
        raise TypeError(
            "backbone must be an nn.Module with an out_channels attribute (the width of its "
            f"feature maps), got {type(backbone).__name__}"
        )
    if mask_loss not in MASK_LOSSES:
        raise ValueError(f"mask_loss must be one of {MASK_LOSSES}, got {mask_loss!r}")
    if box_predictor is not None:
        if num_classes is not None:
            raise ValueError("num_classes should be None when box_predictor is given")
        num_classes = getattr(getattr(box_predictor, "cls_score", None), "out_features", None)
        if num_classes is None:
            raise ValueError("give num_classes: box_predictor has no cls_score to read it from")
    if num_classes is None:
        raise ValueError("num_classes is needed when box_predictor is not given")
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background: need >= 2, got {num_classes}")
    return num_classes


def maskrcnn_fpn(
    num_classes: int,
    *,
    backbone: str = "resnet50",
    backbone_width: int = 32,
    norm: str = "bn",
    bn_eps: float | None = None,
    trainable_backbone_layers: int = 5,
    fpn_channels: int = 256,
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
    parts: Parts | None = None,
    mask_loss: str = "sigmoid",
    **kwargs,
) -> MaskRCNN:
    """A ResNet-FPN Mask R-CNN from options: the backbone, the widths, the anchors and the
    RoI operator (the paper's ablations), as modules for :class:`MaskRCNN`.

    Args:
        num_classes: including the background.
        backbone, backbone_width, norm, bn_eps, trainable_backbone_layers, fpn_channels: see
            :func:`~refimpl.model.fpn.resnet_fpn_backbone` (``"resnet50"``, 256 channels).
        anchor_sizes: one per level P2..P6 (32..512); aspect_ratios (h / w): 0.5, 1, 2.
        representation_size: the box head's fc width (1024).
        mask_layers: the mask head's conv widths (None: 4 x ``fpn_channels``).
        mask_dim_reduced: the deconvolution's width (None: ``mask_layers[-1]``).
        roi_op: ``"align"`` | ``"warp"`` | ``"pool"`` (Table 2c); ``"align"`` with
            ``roi_pool_mode="avg"`` is ``parts.roi_align`` (refimpl's RoIAlign by default),
            the others are refimpl's operators and refuse a ``roi_align`` part.
        roi_pool_mode: ``"avg"`` | ``"max"`` (align and warp).
        aligned: RoIAlign's half-pixel offset (False: the paper, torchvision).
        sampling_ratio: samples per bin and axis (2; <= 0: adaptive).
        canonical_scale, canonical_level: FPN eq. 1's 224 and 4.
        box_roi_output_size, mask_roi_output_size: 7 and 14.
        parts: :class:`~refimpl.model.parts.Parts` (None: refimpl's).
        mask_loss: ``"sigmoid"`` | ``"softmax"`` | ``"agnostic"`` (Table 2b).
        kwargs: any other :class:`MaskRCNN` keyword (``min_size``, ``box_score_thresh``, ...).
    """
    parts = (parts or Parts()).validate()
    body = resnet_fpn_backbone(
        backbone,
        width=backbone_width,
        fpn_channels=fpn_channels,
        norm=norm,
        bn_eps=bn_eps,
        trainable_layers=trainable_backbone_layers,
    )
    anchor_generator = AnchorGenerator(
        tuple((s,) for s in anchor_sizes),
        (tuple(aspect_ratios),) * len(anchor_sizes),
        anchors_fn=parts.anchors,
    )
    rpn_head = RPNHead(fpn_channels, anchor_generator.num_anchors_per_location()[0])
    op = _roi_op(parts, roi_op, roi_pool_mode)

    def pooler(output_size: int) -> MultiLevelRoIPooler:
        return fpn_roi_pooler(
            output_size,
            sampling_ratio,
            canonical_scale,
            canonical_level,
            op,
            roi_pool_mode,
            aligned,
            parts.fpn_level,
        )

    mask_layers = tuple(mask_layers) if mask_layers is not None else (fpn_channels,) * 4
    mask_dim_reduced = mask_dim_reduced if mask_dim_reduced is not None else mask_layers[-1]
    box_roi_pool = pooler(box_roi_output_size)
    box_head = TwoMLPHead(fpn_channels * box_roi_output_size**2, representation_size)
    box_predictor = FastRCNNPredictor(representation_size, num_classes)
    mask_roi_pool = pooler(mask_roi_output_size)
    mask_head = MaskRCNNHeads(fpn_channels, mask_layers)
    mask_classes = 1 if mask_loss == "agnostic" else num_classes
    mask_predictor = MaskRCNNPredictor(mask_layers[-1], mask_dim_reduced, mask_classes)
    return MaskRCNN(
        body,
        rpn_anchor_generator=anchor_generator,
        rpn_head=rpn_head,
        box_roi_pool=box_roi_pool,
        box_head=box_head,
        box_predictor=box_predictor,
        mask_roi_pool=mask_roi_pool,
        mask_head=mask_head,
        mask_predictor=mask_predictor,
        parts=parts,
        mask_loss=mask_loss,
        **kwargs,
    )


def _roi_op(parts: Parts, roi_op: str, pool_mode: str):
    """The pooler's operator: ``parts.roi_align`` for RoIAlign avg (the paper's), else the
    name of one of refimpl's operators (which a ``roi_align`` part cannot stand in for)."""
    if roi_op == "align" and pool_mode == "avg":
        return parts.roi_align
    if parts.is_given("roi_align"):
        raise ValueError(
            f"roi_op={roi_op!r} with roi_pool_mode={pool_mode!r} is one of refimpl's operators, "
            "but parts.roi_align (yours) is RoIAlign avg: use roi_op='align', "
            "roi_pool_mode='avg' with it, or leave parts.roi_align out"
        )
    return roi_op


def maskrcnn_resnet50_fpn(num_classes: int = 91, **kwargs) -> MaskRCNN:
    """torchvision's ``maskrcnn_resnet50_fpn`` (v1): ResNet-50-FPN, every default as there;
    ``kwargs``: :func:`maskrcnn_fpn`'s and :class:`MaskRCNN`'s options."""
    return maskrcnn_fpn(num_classes, **{"backbone": "resnet50", **kwargs})


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
    :data:`SMALL_DEFAULTS` and take any :func:`maskrcnn_fpn` or :class:`MaskRCNN` option,
    ``parts`` included."""
    return maskrcnn_fpn(num_classes, **{**SMALL_DEFAULTS, **kwargs})
