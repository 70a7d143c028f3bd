"""Fidelity: our Mask R-CNN gives torchvision's outputs, losses and gradients.

The reference is torchvision's own ``maskrcnn_resnet50_fpn`` (ResNet-50-FPN, every module as
in the published model; 7 classes, small images and few RoIs for speed) with deterministic
random weights (tests/fixtures/model/random_weights.py: only the key list and a seed are
stored). We rebuild the same weights, load them with ``from_torchvision`` (strict: every key
maps 1:1) and compare, in float64:

- evaluation: the RPN proposals, then per image the boxes, labels, scores and pasted masks;
- training with the deterministic sampler: the five losses and the gradients of parameters
  along the whole backward path (heads, RoIAlign, FPN, backbone BatchNorm);
- training with torchvision's random sampler after the same ``torch.manual_seed``: the same
  random numbers must be drawn in the same order.

The RoI operators are checked against torchvision elsewhere (tests/ops); what is pinned here
is the model glue. Regenerate: tests/fixtures/model/make_model_fixtures.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from refimpl.model import LOSS_NAMES, from_torchvision
from tests.fixtures.model.random_weights import random_state_dict

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "model"
META = json.loads((FIXTURES / "maskrcnn_torchvision.json").read_text())

# The targets of the task: boxes and scores to 1e-4, masks to 1e-3, labels equal. In float64
# the differences are ~1e-12: anything near the tolerance would mean a real discrepancy.
TOL = {"boxes": 1e-4, "scores": 1e-4, "masks": 1e-3, "proposals": 1e-4}


@pytest.fixture(scope="module")
def arrays():
    with np.load(FIXTURES / "maskrcnn_torchvision.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def state_dict():
    return random_state_dict(META["state_dict_spec"], META["weight_seed"])


def build(state_dict, dtype=torch.float64, deterministic=False):
    model = from_torchvision(state_dict, **META["config"]).to(dtype)
    assert model.num_classes == META["num_classes"]
    model.set_sampling(deterministic=deterministic)
    return model


def data(arrays, dtype):
    images, targets = [], []
    for i in range(2):
        images.append(torch.from_numpy(arrays[f"data/{i}/image"]).to(dtype) / 255)
        targets.append(
            {
                "boxes": torch.from_numpy(arrays[f"data/{i}/boxes"]).to(dtype),
                "labels": torch.from_numpy(arrays[f"data/{i}/labels"]),
                "masks": torch.from_numpy(arrays[f"data/{i}/masks"]),
            }
        )
    return images, targets


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - b))) if np.size(b) else 0.0


def assert_losses_equal(losses, ref) -> None:
    """Equal to float64 rounding, except ``loss_objectness``: torchvision makes the RPN's
    labels float32 whatever the model's dtype, so its float64 objectness loss is rounded to
    float32 (ours keeps the anchors' dtype): equal to float32 rounding."""
    for name in LOSS_NAMES:
        rtol = 1e-6 if name == "loss_objectness" else 1e-9
        np.testing.assert_allclose(losses[name].item(), ref[name], rtol=rtol, err_msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_eval_outputs_match_torchvision(state_dict, arrays, dtype):
    tag = str(dtype).removeprefix("torch.")
    model = build(state_dict, dtype).eval()
    proposals = []
    model.rpn.register_forward_hook(lambda *hook: proposals.append(hook[2][0]))
    images, _ = data(arrays, dtype)
    with torch.no_grad():
        out = model(images)

    diffs = {}
    for i, det in enumerate(out):
        ref = {k: arrays[f"eval_{tag}/{i}/{k}"] for k in ("boxes", "labels", "scores", "masks")}
        assert det["boxes"].dtype == dtype and det["masks"].dtype == dtype
        assert det["masks"].shape == (len(ref["boxes"]), 1, *images[i].shape[-2:])
        np.testing.assert_array_equal(det["labels"].numpy(), ref["labels"], err_msg=f"image {i}")
        for key in ("boxes", "scores", "masks"):
            diffs[f"{i}/{key}"] = max_diff(det[key].numpy(), ref[key])
            assert diffs[f"{i}/{key}"] <= TOL[key], (i, key, diffs[f"{i}/{key}"])
        if tag == "float64":
            ref_props = arrays[f"eval_{tag}/{i}/proposals"]
            assert proposals[0][i].shape == ref_props.shape
            diffs[f"{i}/proposals"] = max_diff(proposals[0][i].numpy(), ref_props)
            assert diffs[f"{i}/proposals"] <= TOL["proposals"]
    print(f"\n{tag} max |ours - torchvision|:", {k: f"{v:.1e}" for k, v in diffs.items()})


def test_training_losses_and_gradients_match_torchvision(state_dict, arrays):
    model = build(state_dict, deterministic=True).train()
    images, targets = data(arrays, torch.float64)
    losses = model(images, targets)
    assert tuple(losses) == LOSS_NAMES
    assert_losses_equal(losses, META["losses"]["first"])

    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    for key in META["grad_keys"]:
        np.testing.assert_allclose(
            params[key].grad.numpy(),
            arrays[f"train_first/grad/{key}"],
            rtol=1e-6,
            atol=1e-9,
            err_msg=key,
        )


def test_seeded_random_sampling_matches_torchvision(state_dict, arrays):
    model = build(state_dict).train()
    images, targets = data(arrays, torch.float64)
    torch.manual_seed(META["train_seed"])
    with torch.no_grad():
        losses = model(images, targets)
    assert_losses_equal(losses, META["losses"]["seeded"])
