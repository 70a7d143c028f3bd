"""Stage 2: Mask R-CNN (He et al. 2017), one file per part of the paper's figure.

==========================  ================================================================
``backbone.py``             ResNet (C2..C5), BatchNorm or FrozenBatchNorm
``fpn.py``                  Feature Pyramid Network (P2..P5) + P6 (FPN sec. 3, 4.1);
                            ``resnet_fpn_backbone``
``anchors.py``              anchors per level (Faster R-CNN sec. 3.1.1)
``boxes.py``                box utilities: area, clipping, small boxes, IoU, NMS
``box_coder.py``            boxes <-> deltas (Faster R-CNN eq. 2)
``matcher.py``              IoU matching with low-quality matches (Faster R-CNN sec. 3.1.2)
``sampler.py``              balanced positive/negative sampling (sec. 3.1.3)
``rpn.py``                  RPN head, proposals, RPN losses
``poolers.py``              FPN level assignment (FPN eq. 1) + any RoI operator per level
``box_head.py``             2-fc head + class and box predictors
``mask_head.py``            4-conv FCN + deconvolution mask predictor (Mask R-CNN Figure 4)
``losses.py``               the five losses, the mask targets
``roi_heads.py``            matching, sampling, losses, postprocessing of the second stage
``transform.py``            normalize, resize, batch; boxes back and mask pasting
``parts.py``                :class:`Parts`: the replaceable parts (a learner's ops plug in here)
``mask_rcnn.py``            :class:`MaskRCNN` and the builders
``torchvision_weights.py``  torchvision state dicts
==========================  ================================================================
"""

from .fpn import resnet_fpn_backbone
from .mask_rcnn import (
    LOSS_NAMES,
    SMALL_DEFAULTS,
    MaskRCNN,
    maskrcnn_fpn,
    maskrcnn_resnet50_fpn,
    maskrcnn_small,
)
from .parts import PartError, Parts
from .torchvision_weights import from_torchvision, load_torchvision_state_dict

__all__ = [
    "LOSS_NAMES",
    "SMALL_DEFAULTS",
    "MaskRCNN",
    "PartError",
    "Parts",
    "from_torchvision",
    "load_torchvision_state_dict",
    "maskrcnn_fpn",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_small",
    "resnet_fpn_backbone",
]
