"""The transform: normalize, resize (torchvision's scale logic), batch, and postprocess
(boxes back, masks pasted as torchvision's paste_masks_in_image)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refimpl.model.transform import (
    GeneralizedRCNNTransform,
    paste_masks_in_image,
    resize_boxes,
)

D = torch.float64


def make(min_size=128, max_size=256, **kw):
    return GeneralizedRCNNTransform(min_size, max_size, **kw).eval()


@pytest.mark.parametrize(
    ("hw", "min_size", "max_size", "out"),
    [
        ((100, 125), 128, 256, (128, 160)),  # short side -> min_size
        ((100, 300), 128, 200, (66, 200)),  # long side capped: scale 2/3, floor(66.67) = 66
        ((49, 49), 128, 256, (127, 127)),  # 49 * (128 / 49) is 127.99999... in float: floor
        ((128, 128), 128, 128, (128, 128)),  # identity
    ],
)
def test_resize_sizes(hw, min_size, max_size, out):
    img = torch.rand(3, *hw, dtype=D)
    resized, _ = make(min_size, max_size).resize(img)
    assert tuple(resized.shape[-2:]) == out


def test_resize_samples_with_the_recomputed_scale():
    # recompute_scale_factor=True: the grid uses output / input, not the requested scale
    img = torch.rand(1, 49, 49, dtype=D)
    resized, _ = make(128, 256).resize(img)
    want = F.interpolate(img[None], size=(127, 127), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(resized, want, rtol=0, atol=0)


def test_resize_targets():
    img = torch.rand(3, 50, 40, dtype=D)
    masks = torch.zeros(2, 50, 40, dtype=torch.uint8)
    masks[0, 10:20, 5:15] = 1
    target = {
        "boxes": torch.tensor([[5.0, 10.0, 15.0, 20.0], [1.5, 2.5, 39.0, 49.0]], dtype=D),
        "labels": torch.tensor([1, 2]),
        "masks": masks,
    }
    resized, t = make(100, 1000).resize(img, target)  # scale 2.5 -> 125 x 100
    assert resized.shape[-2:] == (125, 100)
    torch.testing.assert_close(t["boxes"][0], torch.tensor([12.5, 25.0, 37.5, 50.0], dtype=D))
    assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (2, 125, 100)
    # nearest neighbour: the mask stays binary and scales with the box
    assert t["masks"][0].sum() == 25 * 25
    assert target["boxes"][0, 0] == 5.0  # the input target is not modified
    assert torch.equal(t["labels"], target["labels"])


def test_resize_boxes_ratios_are_per_axis():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]], dtype=D)
    out = resize_boxes(boxes, (100, 50), (200, 25))
    torch.testing.assert_close(out, torch.tensor([[5.0, 40.0, 15.0, 80.0]], dtype=D))


def test_normalize_and_batch_padding():
    tr = make(64, 100, image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))
    images = [torch.full((3, 64, 70), 0.75, dtype=D), torch.full((3, 40, 64), 0.25, dtype=D)]
    batch, _ = tr(images)
    # resized: (64, 70) and (64, 100) [40 x 64 scaled by 1.6, capped by 100 / 64 -> 1.5625]
    assert batch.image_sizes == [(64, 70), (62, 100)]
    assert batch.tensors.shape == (2, 3, 64, 128)  # padded to multiples of 32
    assert torch.allclose(batch.tensors[0, :, :, :70], torch.tensor(1.0, dtype=D))
    assert torch.all(batch.tensors[0, :, :, 70:] == 0.0)  # zero padding
    assert torch.allclose(batch.tensors[1, :, :62, :100], torch.tensor(-1.0, dtype=D))
    assert torch.all(batch.tensors[1, :, 62:] == 0.0)


def test_training_draws_a_min_size():
    tr = GeneralizedRCNNTransform((32, 64), 1000).train()
    sizes = {tr.resize(torch.rand(3, 16, 16))[0].shape[-1] for _ in range(40)}
    assert sizes == {32, 64}
    assert tr.eval().resize(torch.rand(3, 16, 16))[0].shape[-1] == 64  # eval: the last


def test_non_float_images_are_refused():
    with pytest.raises(TypeError, match="floating"):
        make()([torch.zeros(3, 8, 8, dtype=torch.uint8)])


def test_paste_full_box_mask_is_the_box_region():
    # a mask of ones pasted into box (10, 20, 38, 48): torchvision pads it by one zero pixel
    # and scales the box by 30 / 28 about its centre, to (9, 19, 39, 49): the resized mask
    # fades to 0 over one pixel on each side, and at 0.5 it is the box's pixels x1..x2, y1..y2
    masks = torch.ones(1, 1, 28, 28, dtype=D)
    box = torch.tensor([[10.0, 20.0, 38.0, 48.0]], dtype=D)
    pasted = paste_masks_in_image(masks, box, (64, 80))
    assert pasted.shape == (1, 1, 64, 80)
    region = torch.zeros(64, 80, dtype=torch.bool)
    region[20:49, 10:39] = True
    assert torch.equal(pasted[0, 0] >= 0.5, region)
    torch.testing.assert_close(pasted[0, 0, 21:48, 11:38], torch.ones(27, 27, dtype=D))
    outside = torch.ones(64, 80, dtype=torch.bool)
    outside[19:50, 9:40] = False
    assert torch.all(pasted[0, 0][outside] == 0.0)


def test_paste_by_hand_and_clipping():
    # a box partly outside the image: the pasted part is cut at the image border
    masks = torch.rand(2, 1, 28, 28, dtype=D)
    boxes = torch.tensor([[-5.0, -3.0, 20.0, 15.0], [50.0, 30.0, 70.0, 45.0]], dtype=D)
    pasted = paste_masks_in_image(masks, boxes, (40, 60))
    for k in range(2):
        # by hand: pad, expand by 30 / 28, truncate towards zero, resize to int(x2 - x1 + 1)
        m = F.pad(masks[k : k + 1], (1, 1, 1, 1))
        x1, y1, x2, y2 = boxes[k].tolist()
        cx, cy, hw, hh = (
            (x1 + x2) / 2,
            (y1 + y2) / 2,
            (x2 - x1) / 2 * 30 / 28,
            (y2 - y1) / 2 * 30 / 28,
        )
        bx1, by1, bx2, by2 = (int(v) for v in (cx - hw, cy - hh, cx + hw, cy + hh))
        r = F.interpolate(
            m, size=(by2 - by1 + 1, bx2 - bx1 + 1), mode="bilinear", align_corners=False
        )[0, 0]
        canvas = torch.zeros(40 + 80, 60 + 80, dtype=D)  # room on every side, then crop
        canvas[by1 + 40 : by2 + 41, bx1 + 40 : bx2 + 41] = r
        torch.testing.assert_close(pasted[k, 0], canvas[40:80, 40:100], rtol=0, atol=0)


def test_postprocess_rescales_boxes_and_pastes():
    tr = make()
    result = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 38.0, 48.0]], dtype=D),
            "masks": torch.ones(1, 1, 28, 28, dtype=D),
        }
    ]
    out = tr.postprocess(result, [(128, 160)], [(64, 80)])
    torch.testing.assert_close(out[0]["boxes"], torch.tensor([[5.0, 10.0, 19.0, 24.0]], dtype=D))
    assert out[0]["masks"].shape == (1, 1, 64, 80)
    empty = tr.postprocess(
        [{"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 1, 28, 28)}], [(10, 10)], [(7, 9)]
    )
    assert empty[0]["masks"].shape == (0, 1, 7, 9)
