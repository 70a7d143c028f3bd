"""State-dict compatibility with torchvision's maskrcnn_resnet50_fpn (no torchvision needed:
the key/shape lists come from the fixture json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from refimpl.model import from_torchvision, load_torchvision_state_dict, maskrcnn_resnet50_fpn
from refimpl.model.backbone import FrozenBatchNorm2d
from refimpl.model.torchvision_weights import upgrade_legacy_keys

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "model"
META = json.loads((FIXTURES / "maskrcnn_torchvision.json").read_text())
DEFAULT_SPEC = [(k, tuple(s)) for k, s in META["default_state_dict_spec"]]


@pytest.fixture(scope="module")
def tv_state_dict():
    """A torchvision-shaped (91 classes, BatchNorm2d) state dict of zeros (cheap)."""
    return {
        k: torch.zeros(s, dtype=torch.int64 if k.endswith("num_batches_tracked") else torch.float32)
        for k, s in DEFAULT_SPEC
    }


def test_keys_and_shapes_are_torchvision_s():
    ours = [(k, tuple(v.shape)) for k, v in maskrcnn_resnet50_fpn().state_dict().items()]
    assert ours == DEFAULT_SPEC  # same names, same shapes, same order (360 entries)


def test_from_torchvision_batchnorm(tv_state_dict):
    model = from_torchvision(tv_state_dict)
    assert model.num_classes == 91
    assert isinstance(model.backbone.body.bn1, torch.nn.BatchNorm2d)


def test_from_torchvision_frozen_and_any_num_classes(tv_state_dict):
    # a pretrained checkpoint (FrozenBatchNorm2d: no num_batches_tracked), 5 classes
    sd = {k: v for k, v in tv_state_dict.items() if not k.endswith("num_batches_tracked")}
    for k in ("cls_score.weight", "cls_score.bias", "bbox_pred.weight", "bbox_pred.bias"):
        key = f"roi_heads.box_predictor.{k}"
        rows = 5 if "cls" in k else 20
        sd[key] = torch.zeros(rows, *sd[key].shape[1:])
    for k in ("weight", "bias"):
        key = f"roi_heads.mask_predictor.mask_fcn_logits.{k}"
        sd[key] = torch.zeros(5, *sd[key].shape[1:])
    model = from_torchvision(sd, box_score_thresh=0.3)
    assert model.num_classes == 5 and model.roi_heads.score_thresh == 0.3
    bn = model.backbone.body.layer3[2].bn2
    assert isinstance(bn, FrozenBatchNorm2d) and bn.eps == 0.0  # torchvision's COCO setting
    assert from_torchvision(sd, bn_eps=1e-5).backbone.body.bn1.eps == 1e-5


def test_legacy_keys_are_upgraded(tv_state_dict):
    legacy = {}
    for k, v in tv_state_dict.items():
        k = k.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for i in range(4):
            k = k.replace(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.")
            k = k.replace(f"fpn.inner_blocks.{i}.0.", f"fpn.inner_blocks.{i}.")
            k = k.replace(f"fpn.layer_blocks.{i}.0.", f"fpn.layer_blocks.{i}.")
        legacy[k] = v
    assert "roi_heads.mask_head.mask_fcn4.bias" in legacy and "rpn.head.conv.weight" in legacy
    assert list(upgrade_legacy_keys(legacy)) == list(tv_state_dict)
    model = maskrcnn_resnet50_fpn()
    result = load_torchvision_state_dict(model, legacy)
    assert not result.missing_keys and not result.unexpected_keys


def test_wrong_shapes_are_refused(tv_state_dict):
    with pytest.raises(RuntimeError, match="size mismatch"):
        from_torchvision(tv_state_dict, num_classes=5)
