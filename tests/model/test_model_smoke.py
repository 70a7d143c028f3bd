"""The assembled model: one SGD step for every RoI operator and mask loss, the output format,
images without objects, and the checks on the targets."""

from __future__ import annotations

import math

import pytest
import torch

from refimpl.model import LOSS_NAMES, MaskRCNN, maskrcnn_fpn, maskrcnn_small, resnet_fpn_backbone

from .conftest import synthetic_batch

VARIANTS = [
    {},  # the paper's: RoIAlign (avg), per-class sigmoid
    {"roi_pool_mode": "max"},
    {"roi_op": "warp", "roi_pool_mode": "max"},
    {"roi_op": "warp", "roi_pool_mode": "avg"},
    {"roi_op": "pool"},
    {"mask_loss": "softmax"},
    {"mask_loss": "agnostic"},
    # detectron2's choices
    {
        "aligned": True,
        "sampling_ratio": 0,
        "rpn_smooth_l1_beta": 0.0,
        "box_smooth_l1_beta": 0.0,
        "binarize_mask_targets": True,
    },
]


@pytest.mark.parametrize(
    "options", VARIANTS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "default"
)
def test_one_sgd_step(options):
    torch.manual_seed(0)
    model = maskrcnn_small(4, **options).train()
    images, targets = synthetic_batch(128, 2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = model(images, targets)
    assert tuple(losses) == LOSS_NAMES
    assert all(v.dim() == 0 and math.isfinite(v.item()) and v.item() >= 0 for v in losses.values())
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    changed = {
        n.split(".")[0] + "." + n.split(".")[1]
        for n, p in model.named_parameters()
        if not torch.equal(p, before[n])
    }
    # every part of the model receives a gradient
    assert {
        "backbone.body",
        "backbone.fpn",
        "rpn.head",
        "roi_heads.box_head",
        "roi_heads.box_predictor",
        "roi_heads.mask_head",
        "roi_heads.mask_predictor",
    } <= changed

    model.eval()
    with torch.no_grad():
        out = model(images)
    for det, img in zip(out, images, strict=True):
        n = len(det["boxes"])
        assert set(det) == {"boxes", "labels", "scores", "masks"}
        assert det["boxes"].shape == (n, 4) and det["labels"].dtype == torch.int64
        assert det["masks"].shape == (n, 1, *img.shape[-2:])
        assert n <= model.roi_heads.detections_per_img
        if n:
            assert 0 <= det["masks"].min() and det["masks"].max() <= 1
            assert torch.all(det["scores"][:-1] >= det["scores"][1:])  # by decreasing score


def test_images_without_objects_and_different_sizes():
    model = maskrcnn_small(3, min_size=96, max_size=128).train()
    images, targets = synthetic_batch(96, 1)
    images.append(torch.rand(3, 80, 120))
    targets.append(
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, 80, 120, dtype=torch.uint8),
        }
    )
    losses = model(images, targets)
    assert all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()


def test_float64_and_config():
    model = maskrcnn_small(3).double().eval()
    with torch.no_grad():
        out = model([torch.rand(3, 100, 140, dtype=torch.float64)])
    assert out[0]["boxes"].dtype == torch.float64 and out[0]["masks"].shape[-2:] == (100, 140)
    assert model.transform.min_size == (128,) and model.backbone.out_channels == 64
    assert model.roi_heads.box_roi_pool.canonical_scale == 56


def test_target_checks():
    model = maskrcnn_small(3).train()
    images, targets = synthetic_batch(128, 1)
    bad = [
        ({**targets[0], "labels": torch.tensor([1, 3])}, "labels"),  # 3 >= num_classes
        ({**targets[0], "labels": torch.tensor([1, 2], dtype=torch.int32)}, "int64"),
        ({**targets[0], "boxes": torch.tensor([[5.0, 5, 5, 9], [1, 1, 9, 9]])}, "positive width"),
        ({**targets[0], "masks": targets[0]["masks"][:, :64]}, "masks"),
        ({k: v for k, v in targets[0].items() if k != "masks"}, "masks"),
    ]
    for target, match in bad:
        with pytest.raises(ValueError, match=match):
            model(images, [target])
    with pytest.raises(ValueError, match="targets"):
        model(images)
    with pytest.raises(ValueError, match="mask_loss"):
        maskrcnn_fpn(3, mask_loss="dice")
    with pytest.raises(ValueError, match="backbone"):
        maskrcnn_fpn(3, backbone="vgg16")


def test_maskrcnn_takes_modules_as_torchvision():
    """torchvision's constructor: a backbone module, num_classes or a box_predictor."""
    backbone = resnet_fpn_backbone("small", width=8, fpn_channels=16)
    model = MaskRCNN(backbone, 3, min_size=64, max_size=64)
    assert model.backbone is backbone and model.num_classes == 3
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    # torchvision's default heads: 4 convs of 256, a 1024-wide box head
    assert model.roi_heads.mask_head[0][0].out_channels == 256
    assert model.roi_heads.box_head.fc7.out_features == 1024
    model.eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 64, 64)])
    assert set(out) == {"boxes", "labels", "scores", "masks"}
    with pytest.raises(TypeError, match=r"nn\.Module"):
        MaskRCNN("resnet50", 3)
    with pytest.raises(TypeError, match="out_channels"):
        MaskRCNN(torch.nn.Identity(), 3)
    with pytest.raises(ValueError, match="num_classes is needed"):
        MaskRCNN(backbone)
    with pytest.raises(ValueError, match="should be None"):
        MaskRCNN(backbone, 3, box_predictor=model.roi_heads.box_predictor)
    with pytest.raises(ValueError, match="background"):
        MaskRCNN(backbone, 1)


def test_no_detections():
    model = maskrcnn_small(3, box_score_thresh=1.0).eval()  # softmax scores never exceed 1
    with torch.no_grad():
        out = model([torch.rand(3, 128, 128), torch.rand(3, 96, 128)])
    assert [o["boxes"].shape for o in out] == [(0, 4), (0, 4)]
    assert out[1]["masks"].shape == (0, 1, 96, 128) and out[1]["labels"].dtype == torch.int64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("roi_op", ["align", "pool"])
def test_cuda_matches_cpu(roi_op):
    """The whole model on CUDA tensors (the refimpl CUDA kernels inside): inference equals
    the CPU model's in float64, and a training step gives finite losses and gradients."""
    torch.manual_seed(0)
    model = maskrcnn_small(3, roi_op=roi_op).double().eval()
    images, targets = synthetic_batch(128, 2, dtype=torch.float64)
    with torch.no_grad():
        out_cpu = model(images)
        out_gpu = model.cuda()([im.cuda() for im in images])
    for a, b in zip(out_cpu, out_gpu, strict=True):
        assert set(a) == set(b)
        for key in a:
            torch.testing.assert_close(b[key].cpu(), a[key], rtol=1e-7, atol=1e-7)
    model.train().float()
    losses = model(
        [im.float().cuda() for im in images],
        [{k: v.cuda() for k, v in t.items()} for t in targets],
    )
    assert tuple(losses) == LOSS_NAMES
    sum(losses.values()).backward()
    assert all(math.isfinite(v.item()) for v in losses.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
