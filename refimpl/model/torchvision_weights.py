"""Loading torchvision ``maskrcnn_resnet50_fpn`` state dicts into :class:`MaskRCNN`.

Our modules carry torchvision's names (``backbone.body``, ``backbone.fpn.inner_blocks.i.0``,
``rpn.head.conv.0.0``, ``roi_heads.box_head.fc6``, ``roi_heads.mask_head.i.0``,
``roi_heads.mask_predictor.conv5_mask``, ...), so keys map one to one; the only translation is
for checkpoints saved before torchvision renamed a few modules (version-1 keys such as
``rpn.head.conv.weight``, ``backbone.fpn.inner_blocks.0.weight``,
``roi_heads.mask_head.mask_fcn1.weight``; the published COCO weights use them).

Two details decide whether the outputs are torchvision's:

- BatchNorm: a model built with ``weights=None, weights_backbone=None`` has ordinary
  ``BatchNorm2d`` (its state dict has ``num_batches_tracked``); a pretrained one has
  ``FrozenBatchNorm2d`` (no ``num_batches_tracked``). :func:`from_torchvision` picks the same
  by default.
- epsilon: torchvision sets the frozen BatchNorms' eps to 0.0 after loading its COCO weights
  (``overwrite_eps``, for the weights' original training code); a model trained from an
  ImageNet backbone keeps 1e-5. ``bn_eps`` chooses; the default follows the COCO weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from .mask_rcnn import MaskRCNN, maskrcnn_resnet50_fpn

# version-1 torchvision keys -> current ones
_LEGACY_KEYS = [
    (re.compile(r"^(rpn\.head\.conv)\.(weight|bias)$"), r"\1.0.0.\2"),
    (re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$"), r"\1.0.\2"),
]
_MASK_FCN = re.compile(r"^(roi_heads\.mask_head)\.mask_fcn(\d+)\.(weight|bias)$")


def upgrade_legacy_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``state_dict`` with torchvision's version-1 key names updated."""
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _LEGACY_KEYS:
            key = pattern.sub(repl, key)
        m = _MASK_FCN.match(key)
        if m:  # mask_fcn1..4 -> 0..3
            key = f"{m.group(1)}.{int(m.group(2)) - 1}.0.{m.group(3)}"
        out[key] = value
    return out


def load_torchvision_state_dict(model: MaskRCNN, state_dict: Mapping[str, Tensor], strict=True):
    """Load a torchvision Mask R-CNN state dict into ``model`` (keys 1:1 after
    :func:`upgrade_legacy_keys`). Returns ``load_state_dict``'s missing/unexpected keys."""
    return model.load_state_dict(upgrade_legacy_keys(state_dict), strict=strict)


def from_torchvision(
    state_dict: Mapping[str, Tensor],
    num_classes: int | None = None,
    norm: str | None = None,
    bn_eps: float | None = None,
    **kwargs,
) -> MaskRCNN:
    """Build :func:`maskrcnn_resnet50_fpn` from a torchvision ``maskrcnn_resnet50_fpn`` state
    dict and load it (strictly).

    Args:
        state_dict: torchvision's (any ``num_classes``).
        num_classes: None: read from ``roi_heads.box_predictor.cls_score.weight``.
        norm: None: ``"bn"`` if the state dict has ``num_batches_tracked`` buffers (a model
            built without pretrained weights), else ``"frozen"``.
        bn_eps: None: 0.0 for frozen BatchNorm (torchvision's COCO weights), 1e-5 otherwise.
        kwargs: any other :class:`MaskRCNN` argument (``min_size``, ``box_score_thresh``, ...).
    """
    state_dict = upgrade_legacy_keys(state_dict)
    if num_classes is None:
        num_classes = state_dict["roi_heads.box_predictor.cls_score.weight"].shape[0]
    if norm is None:
        norm = "bn" if any(k.endswith("num_batches_tracked") for k in state_dict) else "frozen"
    if bn_eps is None:
        bn_eps = 0.0 if norm == "frozen" else 1e-5
    model = maskrcnn_resnet50_fpn(num_classes, norm=norm, bn_eps=bn_eps, **kwargs)
    model.load_state_dict(state_dict, strict=True)
    return model
