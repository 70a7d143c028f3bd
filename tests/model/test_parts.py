"""Parts: the replaceable parts of Mask R-CNN (refimpl/model/parts.py).

1. Every part's contract is checked when the model is built: a wrong signature, a wrong
   output (type, shape, dtype, range), an exception or a missing gradient is a
   :class:`PartError` that names the part (``Parts.<name>``), not a traceback in training.
2. A model given every part explicitly, as refimpl's own functions, is the default model:
   the same five losses and the same detections, bit for bit (same weights, same sampling).
3. ``describe()`` says whose each part is; ``replace()`` copies.
"""

from __future__ import annotations

import pytest
import torch

from refimpl.model import PartError, Parts, maskrcnn_fpn
from refimpl.model.box_coder import decode_boxes, encode_boxes
from refimpl.model.losses import project_masks_on_boxes, sigmoid_mask_loss
from refimpl.model.matcher import match
from refimpl.model.parts import PART_NAMES, SPECS
from refimpl.model.sampler import sample
from refimpl.model.transform import paste_masks_in_image
from refimpl.ops import batched_nms, box_iou, nms, roi_align

from .conftest import TINY, synthetic_batch

D = torch.float64


def _refimpl_parts(**sources) -> Parts:
    """Every part given explicitly, as refimpl's own function (built-on parts included)."""
    given = {n: s.default for n, s in SPECS.items() if s.default is not None}
    given.update(
        batched_nms=batched_nms, mask_targets=project_masks_on_boxes, mask_loss=sigmoid_mask_loss
    )
    return Parts(**given, sources=sources or None)


# --- 1. contracts: each violation is a PartError naming the part ------------------------------


def _one_arg(x):  # a wrong signature for every part
    return x


def _raises(*_args):
    raise RuntimeError("boom in the learner's code")


# One wrong output per part, and the words the error must contain.
WRONG_OUTPUTS = {
    "roi_align": (lambda *a: roi_align(*a)[:, :, :1], "shape [3, 3, 2, 3]"),
    "fpn_level": (lambda *a: SPECS["fpn_level"].default(*a).double(), "dtype torch.int64"),
    "anchors": (lambda *a: SPECS["anchors"].default(*a)[:, :3], "shape [960, 4]"),
    "box_iou": (lambda a, b: box_iou(a, b) * 3, "IoUs in [0, 1]"),
    "encode_boxes": (lambda *a: encode_boxes(*a).float(), "dtype torch.float64"),
    "decode_boxes": (lambda *a: decode_boxes(*a).reshape(3, -1), "shape [3, 2, 4]"),
    "matcher": (lambda *a: match(*a).int(), "dtype torch.int64"),
    "sampler": (lambda *a: (sample(*a)[0],), "a pair (positives, negatives)"),
    "nms": (lambda b, s, t: torch.cat([nms(b, s, t), nms(b, s, t)]), "distinct kept indices"),
    "batched_nms": (lambda *a: batched_nms(*a).double(), "int64 kept indices"),
    "mask_targets": (lambda *a: project_masks_on_boxes(*a) * 2 - 0.5, "fractions in [0, 1]"),
    "mask_loss": (lambda *a: sigmoid_mask_loss(*a).reshape(1), "shape []"),
    "paste_masks": (lambda *a: paste_masks_in_image(*a)[:, 0], "shape [2, 1, 20, 24]"),
}


@pytest.mark.parametrize("name", PART_NAMES)
def test_a_wrong_signature_is_named(name):
    with pytest.raises(PartError, match=rf"Parts\.{name} = .*_one_arg.*signature") as info:
        Parts(**{name: _one_arg}).validate()
    assert SPECS[name].call in str(info.value)  # what was expected


@pytest.mark.parametrize("name", PART_NAMES)
def test_an_exception_is_named(name):
    with pytest.raises(PartError, match=rf"Parts\.{name} = .*raised RuntimeError: boom"):
        Parts(**{name: _raises}).validate()


@pytest.mark.parametrize("name", PART_NAMES)
def test_a_wrong_output_is_named(name):
    fn, words = WRONG_OUTPUTS[name]
    with pytest.raises(PartError, match=rf"^Parts\.{name}: expected ") as info:
        Parts(**{name: fn}).validate()
    assert words in str(info.value)


def test_a_roi_op_without_gradient_is_named():
    def detached(*args):
        return roi_align(*args).detach()

    with pytest.raises(PartError, match=r"Parts\.roi_align: expected an output that depends"):
        Parts(roi_align=detached).validate()


def test_a_roi_op_with_a_zero_gradient_is_named():
    def zero_backward(x, *args):  # the forward's values, but no gradient flows to x
        return roi_align(x.detach(), *args) + 0 * x.sum()

    with pytest.raises(PartError, match=r"Parts\.roi_align: expected a non-zero gradient"):
        Parts(roi_align=zero_backward).validate()


def test_a_mask_loss_without_gradient_is_named():
    def detached(*args):
        return sigmoid_mask_loss(*args).detach()

    with pytest.raises(PartError, match=r"Parts\.mask_loss: expected a loss that depends"):
        Parts(mask_loss=detached).validate()


def test_a_part_that_only_works_in_float32_is_named():
    def float32_only(a, b):
        assert a.dtype == torch.float32, "float32 only"
        return box_iou(a, b)

    with pytest.raises(PartError, match=r"Parts\.box_iou = .*float64.*float32 only"):
        Parts(box_iou=float32_only).validate()


def test_the_builders_validate():
    with pytest.raises(PartError, match=r"Parts\.nms"):
        maskrcnn_fpn(3, **TINY, parts=Parts(nms=_raises))


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"Parts\.nms must be callable"):
        Parts(nms="nms")
    with pytest.raises(ValueError, match="sources names unknown parts"):
        Parts(sources={"roi_pool": "mine.ipynb"})
    with pytest.raises(ValueError, match="no part named 'roi_pool'"):
        Parts().validate(["roi_pool"])
    with pytest.raises(ValueError, match="no part named"):
        Parts().origin("roi_pool")
    with pytest.raises(ValueError, match="mask_loss must be one of"):
        Parts().mask_loss_for("dice")


def test_refimpl_own_functions_keep_every_contract():
    parts = _refimpl_parts()
    assert parts.mine() == list(PART_NAMES)
    assert parts.validate() is parts
    parts.validate(list(PART_NAMES))  # explicitly, once more


# --- 2. refimpl's functions given explicitly: the default model, bit for bit -------------------


def _pair(**options):
    """The default tiny model and one with every part given as refimpl's, same weights."""
    torch.manual_seed(0)
    default = maskrcnn_fpn(3, **TINY, **options).double()
    explicit = maskrcnn_fpn(3, **TINY, **options, parts=_refimpl_parts()).double()
    explicit.load_state_dict(default.state_dict())
    return default, explicit


@pytest.mark.parametrize("aligned", [False, True])
def test_explicit_refimpl_parts_give_the_same_losses_bit_for_bit(aligned):
    default, explicit = _pair(aligned=aligned, box_batch_size_per_image=32)
    images, targets = synthetic_batch(64, 2, dtype=D, seed=3)
    losses = []
    for model in (default, explicit):
        # a given sampler cannot be "deterministic" (first examples); the same seed is the same
        # draw (one randperm of the positives, then one of the negatives, per image)
        model.train().set_sampling(generator=torch.Generator().manual_seed(5))
        losses.append(model(images, targets))
    assert list(losses[0]) == list(losses[1])
    for name, value in losses[0].items():
        assert value.item() > 0, name
        assert torch.equal(value, losses[1][name]), name


def test_explicit_refimpl_parts_give_the_same_detections_bit_for_bit():
    default, explicit = _pair(box_score_thresh=0.0)
    images, _ = synthetic_batch(64, 2, dtype=D, seed=4)
    with torch.no_grad():
        a, b = (m.eval()(images) for m in (default, explicit))
    assert a[0]["boxes"].shape[0] > 0
    for da, db in zip(a, b, strict=True):
        assert da.keys() == db.keys()
        for key in da:
            assert torch.equal(da[key], db[key]), key


def test_a_given_sampler_refuses_deterministic_sampling():
    _, explicit = _pair()
    with pytest.raises(ValueError, match="seed a generator"):
        explicit.set_sampling(deterministic=True)


# --- 3. describe() and replace() ----------------------------------------------------------------


def test_describe_says_whose_each_part_is():
    def my_nms(boxes, scores, iou_threshold):
        return nms(boxes, scores, iou_threshold)

    parts = Parts(nms=my_nms, matcher=match, sources={"nms": "10_box_coding_nms.ipynb"})
    lines = parts.describe().splitlines()
    assert lines[0].split() == ["part", "whose", "exercise", "used", "for"]
    assert set(lines[1]) == {"-"}
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == list(PART_NAMES)
    assert "yours (10_box_coding_nms.ipynb)" in rows["nms"]
    assert "refimpl's, over your nms" in rows["batched_nms"]
    assert rows["matcher"].split()[1] == "yours"
    assert rows["roi_align"].split()[1] == "refimpl"
    assert rows["mask_targets"].split()[1] == "refimpl"  # roi_align not given: refimpl's
    assert all(SPECS[n].used_for in rows[n] for n in PART_NAMES)
    assert repr(parts) == f"Parts(matcher={match.__module__}.match, nms={_qual(my_nms)})"


def _qual(fn) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def test_built_on_parts_follow_the_given_ones():
    calls = []

    def my_roi_align(*args):
        calls.append(args[2])
        return roi_align(*args)

    parts = Parts(roi_align=my_roi_align)
    assert parts.origin("mask_targets") == "refimpl's, over your roi_align"
    assert not parts.is_given("mask_targets") and parts.is_given("roi_align")
    masks = torch.zeros(1, 8, 8, dtype=torch.uint8)
    masks[0, 2:6, 1:7] = 1
    boxes = torch.tensor([[0.5, 1.5, 7.0, 6.5]], dtype=D)
    got = parts.mask_targets(masks, boxes, torch.tensor([0]), 4)
    assert calls == [(4, 4)]  # the mask targets are RoIAligned with the given operator
    assert torch.equal(got, project_masks_on_boxes(masks, boxes, torch.tensor([0]), 4))
    # batched NMS over a given NMS: torchvision's coordinate offset per class
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10.0]], dtype=D)
    scores = torch.tensor([0.9, 0.8, 0.7], dtype=D)
    idxs = torch.tensor([0, 0, 1])
    over = Parts(nms=nms).batched_nms(boxes, scores, idxs, 0.5)
    assert over.tolist() == [0, 2] == batched_nms(boxes, scores, idxs, 0.5).tolist()


def test_replace_copies_and_none_goes_back_to_refimpl():
    def my_nms(boxes, scores, iou_threshold):
        return nms(boxes, scores, iou_threshold)

    parts = Parts(nms=my_nms, matcher=match, sources={"nms": "10.ipynb"})
    other = parts.replace(matcher=None, box_iou=box_iou)
    assert other is not parts
    assert other.mine() == ["box_iou", "nms"]
    assert other.sources == {"nms": "10.ipynb"}
    assert parts.mine() == ["matcher", "nms"]  # unchanged
    assert other.matcher is match and not other.is_given("matcher")  # refimpl's again
    assert other.origin("matcher") == "refimpl"
    assert parts.replace().mine() == parts.mine()
