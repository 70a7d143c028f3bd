"""The replaceable parts of Mask R-CNN: where a learner's own operators plug in.

A Mask R-CNN is a few trainable modules (backbone, FPN, RPN head, box and mask heads) glued
together by parameter-free parts: the RoI operator, anchors, box coding, IoU, matching,
sampling, NMS, mask targets, the mask loss and mask pasting. The course has learners write
each of these (exercises 4-12); :class:`Parts` says which implementation the model calls::

    parts = Parts(roi_align=torch.ops.mycourse.roi_align_tv, nms=my_nms)
    model = maskrcnn_small(4, parts=parts)     # validated here: each part is called once
    print(parts.describe())                    # which parts are yours, which refimpl's

Every part is a function on torch tensors with the contract in :data:`SPECS` (the signature
of refimpl's own function, which is the default, and of the matching exercise). A part that
is not given is refimpl's, except two that are built on other parts when not given:
``batched_nms`` (torchvision's coordinate trick over ``nms``) and ``mask_targets`` (the GT
masks RoIAligned with ``roi_align``), so that a learner's operator is used everywhere the
paper uses it. ``mask_loss`` not given is refimpl's loss for the model's ``mask_loss`` kind.

:meth:`Parts.validate` calls each given part once on a tiny input, in float32 and float64,
and turns a wrong signature, a wrong output (type, shape, dtype, values out of range, no
gradient) or an exception into a :class:`PartError` naming the part and what was expected:
at construction, not as a traceback deep inside training. Whether a part computes the right
values is another question, answered by comparing models part by part
(:mod:`refimpl.course.capstone`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from refimpl.ops import batched_nms as refimpl_batched_nms
from refimpl.ops import box_iou, nms, roi_align

from .anchors import anchors_for_image
from .box_coder import decode_boxes, encode_boxes
from .boxes import batched_nms_over
from .losses import MASK_LOSS_FUNCTIONS, project_masks_on_boxes
from .matcher import match
from .poolers import fpn_level
from .sampler import sample
from .transform import paste_masks_in_image

__all__ = ["PART_NAMES", "SPECS", "PartError", "PartSpec", "Parts"]


class PartError(ValueError):
    """A part that does not keep its contract; the message names the part and what was
    expected."""


@dataclass(frozen=True)
class PartSpec:
    """One part's contract: its call, what it returns, where the model uses it, the exercise
    that writes it, and refimpl's implementation (the default)."""

    call: str
    returns: str
    used_for: str
    exercise: str
    default: Callable | None  # None: built on other parts (batched_nms, mask_targets, mask_loss)


SPECS: dict[str, PartSpec] = {
    "roi_align": PartSpec(
        "roi_align(input [N, C, H, W], boxes [K, 5], output_size (PH, PW), spatial_scale, "
        "sampling_ratio, aligned)",
        "[K, C, PH, PW] in input's dtype, differentiable in input (torchvision.ops.roi_align)",
        "the box and mask heads' RoI features (and the mask targets)",
        "8 (4-6)",
        roi_align,
    ),
    "fpn_level": PartSpec(
        "fpn_level(boxes [R, 4], k_min, k_max, canonical_scale, canonical_level)",
        "int64 [R]: level - k_min (FPN eq. 1)",
        "which pyramid level each RoI is pooled from",
        "11",
        fpn_level,
    ),
    "anchors": PartSpec(
        "anchors(image_size (H, W), feature_sizes [(H_l, W_l)], sizes, aspect_ratios)",
        "[sum_l H_l W_l A_l, 4] float, levels concatenated, (y, x, anchor) order",
        "the RPN's reference boxes",
        "9",
        anchors_for_image,
    ),
    "box_iou": PartSpec(
        "box_iou(boxes1 [N, 4], boxes2 [M, 4])",
        "[N, M] IoU in the boxes' dtype",
        "matching anchors and proposals to GT boxes",
        "10",
        box_iou,
    ),
    "encode_boxes": PartSpec(
        "encode_boxes(gt_boxes [N, 4], reference_boxes [N, 4], weights (wx, wy, ww, wh))",
        "[N, 4] deltas in the boxes' dtype",
        "the RPN's and the box head's regression targets",
        "10",
        encode_boxes,
    ),
    "decode_boxes": PartSpec(
        "decode_boxes(deltas [N, 4K], reference_boxes [N, 4], weights)",
        "[N, K, 4] boxes in deltas' dtype (dw, dh clamped at log(1000 / 16))",
        "proposals from anchors, detections from proposals",
        "10",
        decode_boxes,
    ),
    "matcher": PartSpec(
        "matcher(iou [M, N], high_threshold, low_threshold, allow_low_quality_matches)",
        "int64 [N]: the matched GT index, -1 below low, -2 between",
        "labels of anchors (0.7 / 0.3, low-quality matches) and RoIs (0.5 / 0.5)",
        "11",
        match,
    ),
    "sampler": PartSpec(
        "sampler(labels [list of [N_i]], batch_size_per_image, positive_fraction, generator)",
        "(positives, negatives): per image, sorted int64 indices",
        "which anchors and RoIs enter the losses",
        "11",
        sample,
    ),
    "nms": PartSpec(
        "nms(boxes [N, 4], scores [N], iou_threshold)",
        "int64 [K] kept indices by decreasing score",
        "(through batched_nms, unless that is given)",
        "10",
        nms,
    ),
    "batched_nms": PartSpec(
        "batched_nms(boxes [N, 4], scores [N], idxs [N], iou_threshold)",
        "int64 [K] kept indices by decreasing score, NMS within each idxs value",
        "proposals (per level) and detections (per class)",
        "10",
        None,
    ),
    "mask_targets": PartSpec(
        "mask_targets(gt_masks [G, H, W], boxes [R, 4], matched_idxs [R], resolution M)",
        "[R, M, M] in the boxes' dtype, in [0, 1]",
        "the mask loss's targets",
        "12",
        None,
    ),
    "mask_loss": PartSpec(
        "mask_loss(mask_logits [R, C, M, M], labels [R], targets [R, M, M])",
        "a scalar in the logits' dtype, differentiable in the logits",
        "loss_mask",
        "12",
        None,
    ),
    "paste_masks": PartSpec(
        "paste_masks(masks [D, 1, M, M], boxes [D, 4], image_size (H, W))",
        "[D, 1, H, W] in the masks' dtype",
        "the detections' masks in the image",
        "12",
        paste_masks_in_image,
    ),
}
PART_NAMES = tuple(SPECS)


class Parts:
    """Which implementation of each replaceable part the model calls.

    Every argument is a part (see :data:`SPECS` for its contract); None (the default) is
    refimpl's, except ``batched_nms`` (None: the coordinate trick over ``nms``),
    ``mask_targets`` (None: refimpl's, RoIAligned with ``roi_align``) and ``mask_loss``
    (None: refimpl's loss of the model's ``mask_loss`` kind). ``sources`` labels parts in
    :meth:`describe`, e.g. ``{"nms": "10_box_coding_nms.ipynb"}``.

    Attributes hold the functions the model calls (given, refimpl's or built on others);
    :meth:`is_given` and :meth:`origin` say which is which.
    """

    roi_align: Callable[..., Tensor]
    fpn_level: Callable[..., Tensor]
    anchors: Callable[..., Tensor]
    box_iou: Callable[..., Tensor]
    encode_boxes: Callable[..., Tensor]
    decode_boxes: Callable[..., Tensor]
    matcher: Callable[..., Tensor]
    sampler: Callable[..., tuple[list[Tensor], list[Tensor]]]
    nms: Callable[..., Tensor]
    batched_nms: Callable[..., Tensor]
    mask_targets: Callable[..., Tensor]
    mask_loss: Callable[..., Tensor] | None
    paste_masks: Callable[..., Tensor]

    def __init__(
        self,
        *,
        roi_align: Callable[..., Tensor] | None = None,
        fpn_level: Callable[..., Tensor] | None = None,
        anchors: Callable[..., Tensor] | None = None,
        box_iou: Callable[..., Tensor] | None = None,
        encode_boxes: Callable[..., Tensor] | None = None,
        decode_boxes: Callable[..., Tensor] | None = None,
        matcher: Callable[..., Tensor] | None = None,
        sampler: Callable[..., tuple[list[Tensor], list[Tensor]]] | None = None,
        nms: Callable[..., Tensor] | None = None,
        batched_nms: Callable[..., Tensor] | None = None,
        mask_targets: Callable[..., Tensor] | None = None,
        mask_loss: Callable[..., Tensor] | None = None,
        paste_masks: Callable[..., Tensor] | None = None,
        sources: Mapping[str, str] | None = None,
    ):
        given = {
            "roi_align": roi_align,
            "fpn_level": fpn_level,
            "anchors": anchors,
            "box_iou": box_iou,
            "encode_boxes": encode_boxes,
            "decode_boxes": decode_boxes,
            "matcher": matcher,
            "sampler": sampler,
            "nms": nms,
            "batched_nms": batched_nms,
            "mask_targets": mask_targets,
            "mask_loss": mask_loss,
            "paste_masks": paste_masks,
        }
        for name, fn in given.items():
            if fn is not None and not callable(fn):
                raise TypeError(f"Parts.{name} must be callable, got {type(fn).__name__}")
        self._given = {k: v for k, v in given.items() if v is not None}
        self._validated = not self._given
        self.sources = dict(sources or {})
        unknown = set(self.sources) - set(PART_NAMES)
        if unknown:
            raise ValueError(f"sources names unknown parts {sorted(unknown)}: {PART_NAMES}")
        for name in PART_NAMES:
            setattr(self, name, self._given.get(name, SPECS[name].default))
        if "batched_nms" not in self._given:
            self.batched_nms = (
                batched_nms_over(self.nms) if "nms" in self._given else refimpl_batched_nms
            )
        if "mask_targets" not in self._given and "roi_align" in self._given:
            self.mask_targets = _mask_targets_over(self.roi_align)
        elif "mask_targets" not in self._given:
            self.mask_targets = project_masks_on_boxes

    # --- which are whose ------------------------------------------------------------------

    def is_given(self, name: str) -> bool:
        """Whether ``name`` was given (not refimpl's, nor built on other parts)."""
        _check_name(name)
        return name in self._given

    def origin(self, name: str) -> str:
        """``"yours"`` (given), ``"refimpl"``, or for the parts built on others e.g.
        ``"refimpl's, over your nms"``."""
        _check_name(name)
        if name in self._given:
            source = self.sources.get(name)
            return f"yours ({source})" if source else "yours"
        base = {"batched_nms": "nms", "mask_targets": "roi_align"}.get(name)
        if base and base in self._given:
            return f"refimpl's, over your {base}"
        return "refimpl"

    def mine(self) -> list[str]:
        """The parts given, in :data:`PART_NAMES` order."""
        return [n for n in PART_NAMES if n in self._given]

    def mask_loss_for(self, kind: str) -> Callable[..., Tensor]:
        """The mask loss the model calls for its ``mask_loss`` kind (sigmoid, softmax,
        agnostic): the given one, else refimpl's of that kind."""
        if kind not in MASK_LOSS_FUNCTIONS:
            raise ValueError(f"mask_loss must be one of {tuple(MASK_LOSS_FUNCTIONS)}, got {kind!r}")
        return self._given.get("mask_loss", MASK_LOSS_FUNCTIONS[kind])

    def replace(self, **changes: Any) -> Parts:
        """A copy with some parts changed (None: back to refimpl's)."""
        kwargs = {**self._given, "sources": self.sources, **changes}
        return Parts(**{k: v for k, v in kwargs.items() if v is not None})

    def describe(self) -> str:
        """A table: each part, whose it is, what the model uses it for."""
        rows = [("part", "whose", "exercise", "used for")]
        rows += [(n, self.origin(n), SPECS[n].exercise, SPECS[n].used_for) for n in PART_NAMES]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
            for r in rows
        ]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)

    def __repr__(self) -> str:
        mine = ", ".join(f"{n}={_name(self._given[n])}" for n in self.mine())
        return f"Parts({mine})"

    # --- checking the contracts -----------------------------------------------------------

    def validate(self, names: list[str] | None = None) -> Parts:
        """Call each given part (or those in ``names``) once on a tiny input, in float32 and
        float64; raise :class:`PartError` for the first that breaks its contract. Returns
        ``self``."""
        if names is None and self._validated:
            return self
        for name in names if names is not None else self.mine():
            _check_name(name)
            check = _CHECKS[name]
            for dtype in (torch.float32, torch.float64):
                check(getattr(self, name), dtype)
        if names is None:
            self._validated = True
        return self


def _check_name(name: str) -> None:
    if name not in SPECS:
        raise ValueError(f"no part named {name!r}; the parts are {PART_NAMES}")


def _name(fn: Callable) -> str:
    module = getattr(fn, "__module__", None) or ""
    return f"{module}.{getattr(fn, '__qualname__', repr(fn))}".lstrip(".")


def _mask_targets_over(roi_op: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def mask_targets(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, resolution: int):
        return project_masks_on_boxes(gt_masks, boxes, matched_idxs, resolution, roi_op)

    mask_targets.__qualname__ = f"project_masks_on_boxes(roi_align={_name(roi_op)})"
    return mask_targets


# --- the contracts, checked on tiny inputs --------------------------------------------------


def _describe_value(v: Any) -> str:
    if isinstance(v, Tensor):
        return f"Tensor{list(v.shape)} {str(v.dtype).removeprefix('torch.')}"
    if isinstance(v, (list, tuple)):
        inner = ", ".join(_describe_value(x) for x in v[:4])
        return f"{type(v).__name__} of {len(v)} [{inner}{', ...' if len(v) > 4 else ''}]"
    return repr(v) if isinstance(v, (int, float, bool, str, type(None))) else type(v).__name__


def _call(name: str, fn: Callable, *args: Any) -> Any:
    """``fn(*args)``, or a PartError naming the part, the call and what went wrong."""
    spec = SPECS[name]
    call = f"Parts.{name} = {_name(fn)}, called with ({', '.join(map(_describe_value, args))})"
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins, some torch ops: calling will tell
        signature = None
    if signature is not None:
        try:
            signature.bind(*args)
        except TypeError as e:
            raise PartError(
                f"{call}: its signature {signature} does not take these arguments ({e}); "
                f"expected {spec.call}"
            ) from None
    try:
        return fn(*args)
    except Exception as e:
        raise PartError(
            f"{call}, raised {type(e).__name__}: {e}\n  expected: {spec.call} -> {spec.returns}"
        ) from e


def _expect(name: str, ok: bool, what: str, got: Any) -> None:
    if not ok:
        spec = SPECS[name]
        raise PartError(
            f"Parts.{name}: expected {what}, got {_describe_value(got)}\n"
            f"  contract: {spec.call} -> {spec.returns}"
        )


def _expect_tensor(name: str, got: Any, shape: tuple, dtype: torch.dtype, finite=True) -> Tensor:
    _expect(name, isinstance(got, Tensor), f"a Tensor{list(shape)}", got)
    _expect(name, tuple(got.shape) == shape, f"shape {list(shape)}", got)
    _expect(name, got.dtype == dtype, f"dtype {dtype}", got)
    if finite and got.is_floating_point():
        _expect(name, bool(torch.isfinite(got).all()), "finite values", got)
    return got


def _expect_indices(name: str, got: Any, n: int, what: str) -> Tensor:
    _expect(name, isinstance(got, Tensor) and got.dim() == 1, f"a 1-D Tensor of {what}", got)
    _expect(name, got.dtype == torch.int64, f"int64 {what}", got)
    ok = bool(((got >= 0) & (got < n)).all()) and got.unique().numel() == got.numel()
    _expect(name, ok, f"distinct {what} in [0, {n})", got)
    return got


def _check_roi_align(fn: Callable, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=dtype).requires_grad_()
    boxes = torch.tensor(
        [[0, 1.3, 0.7, 13.1, 11.2], [1, 2.2, 3.3, 9.9, 14.6], [1, 0.5, 0.5, 6.5, 5.5]], dtype=dtype
    )
    out = _call("roi_align", fn, x, boxes, (2, 3), 0.5, 2, False)
    _expect_tensor("roi_align", out, (3, 3, 2, 3), dtype)
    _expect("roi_align", out.requires_grad, "an output that depends on input (autograd)", out)
    (grad,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
    _expect("roi_align", grad is not None, "a gradient for input", grad)
    _expect_tensor("roi_align", grad, (2, 3, 8, 8), dtype)
    _expect("roi_align", bool(grad.abs().sum() > 0), "a non-zero gradient for input", grad)


def _check_fpn_level(fn: Callable, dtype: torch.dtype) -> None:
    boxes = torch.tensor(
        [[0, 0, 224, 224], [0, 0, 111, 111], [0, 0, 900, 900], [3, 3, 60, 60]], dtype=dtype
    )
    out = _call("fpn_level", fn, boxes, 2, 5, 224.0, 4)
    _expect_tensor("fpn_level", out, (4,), torch.int64)
    _expect("fpn_level", bool(((out >= 0) & (out <= 3)).all()), "indices in [0, 3]", out)


def _check_anchors(fn: Callable, dtype: torch.dtype) -> None:
    del dtype  # anchors are computed in float32 whatever the model's dtype
    out = _call("anchors", fn, (64, 64), [(16, 16), (8, 8)], ((8,), (16,)), ((0.5, 1.0, 2.0),) * 2)
    n = 16 * 16 * 3 + 8 * 8 * 3
    _expect("anchors", isinstance(out, Tensor) and out.is_floating_point(), "a float Tensor", out)
    _expect_tensor("anchors", out, (n, 4), out.dtype)


def _boxes(n: int, dtype: torch.dtype, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * 20
    return torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=g, dtype=dtype) * 20], dim=1)


def _check_box_iou(fn: Callable, dtype: torch.dtype) -> None:
    out = _call("box_iou", fn, _boxes(3, dtype, 1), _boxes(2, dtype, 2))
    _expect_tensor("box_iou", out, (3, 2), dtype)
    _expect("box_iou", bool(((out >= 0) & (out <= 1)).all()), "IoUs in [0, 1]", out)


def _check_encode_boxes(fn: Callable, dtype: torch.dtype) -> None:
    out = _call(
        "encode_boxes", fn, _boxes(3, dtype, 3), _boxes(3, dtype, 4), (10.0, 10.0, 5.0, 5.0)
    )
    _expect_tensor("encode_boxes", out, (3, 4), dtype)


def _check_decode_boxes(fn: Callable, dtype: torch.dtype) -> None:
    deltas = torch.randn(3, 8, generator=torch.Generator().manual_seed(5), dtype=dtype)
    out = _call("decode_boxes", fn, deltas, _boxes(3, dtype, 6), (10.0, 10.0, 5.0, 5.0))
    _expect_tensor("decode_boxes", out, (3, 2, 4), dtype)


def _check_matcher(fn: Callable, dtype: torch.dtype) -> None:
    iou = torch.tensor([[0.9, 0.4, 0.1, 0.2, 0.5], [0.1, 0.6, 0.2, 0.25, 0.0]], dtype=dtype)
    for low_quality in (True, False):
        out = _call("matcher", fn, iou.clone(), 0.7, 0.3, low_quality)
        _expect_tensor("matcher", out, (5,), torch.int64)
        ok = bool(((out >= -2) & (out < 2)).all())
        _expect("matcher", ok, "GT indices in [0, 2) or -1 / -2", out)


def _check_sampler(fn: Callable, dtype: torch.dtype) -> None:
    del dtype  # labels are integers
    labels = [torch.tensor([1, 0, 0, 2, -1, 0, 0, 0, 1, 0]), torch.tensor([0, 0, 3, 0])]
    out = _call("sampler", fn, labels, 4, 0.25, torch.Generator().manual_seed(0))
    ok = isinstance(out, (tuple, list)) and len(out) == 2
    _expect("sampler", ok, "a pair (positives, negatives)", out)
    for kind, group, wanted in (("positive", out[0], 1), ("negative", out[1], 0)):
        _expect("sampler", isinstance(group, (list, tuple)) and len(group) == 2,
                f"{kind}s as a list with one tensor per image (2)", group)  # fmt: skip
        for lab, idx in zip(labels, group, strict=True):
            _expect_indices("sampler", idx, lab.numel(), f"{kind} indices")
            right = (lab[idx] >= 1) if wanted else (lab[idx] == 0)
            _expect("sampler", bool(right.all()) and idx.numel() <= 4,
                    f"at most 4 indices of {kind} labels", idx)  # fmt: skip


def _check_nms(fn: Callable, dtype: torch.dtype) -> None:
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=dtype
    )
    out = _call("nms", fn, boxes, torch.tensor([0.9, 0.8, 0.7, 0.95], dtype=dtype), 0.5)
    _expect_indices("nms", out, 4, "kept indices")


def _check_batched_nms(fn: Callable, dtype: torch.dtype) -> None:
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=dtype
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95], dtype=dtype)
    out = _call("batched_nms", fn, boxes, scores, torch.tensor([0, 1, 0, 1]), 0.5)
    _expect_indices("batched_nms", out, 4, "kept indices")


def _check_mask_targets(fn: Callable, dtype: torch.dtype) -> None:
    masks = torch.zeros(2, 16, 16, dtype=torch.uint8)
    masks[0, 3:12, 4:13], masks[1, 8:, :9] = 1, 1
    boxes = torch.tensor(
        [[2.5, 3.1, 12.7, 12.2], [0.4, 7.3, 9.6, 15.5], [4.0, 4.0, 8.0, 8.0]], dtype=dtype
    )
    out = _call("mask_targets", fn, masks, boxes, torch.tensor([0, 1, 0]), 4)
    _expect_tensor("mask_targets", out, (3, 4, 4), dtype)
    # Each target is a mean of bilinear interpolations of 0/1 pixels: weights that sum to 1
    # only up to rounding (a few products and sums, each off by at most eps / 2), so refimpl's
    # own targets reach 1 + eps; 8 eps of slack still refuses any real excursion.
    slack = 8 * torch.finfo(dtype).eps
    ok = bool(((out >= -slack) & (out <= 1 + slack)).all())
    _expect("mask_targets", ok, "fractions in [0, 1]", out)


def _check_mask_loss(fn: Callable, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 4, 5, 5, generator=g, dtype=dtype).requires_grad_()
    targets = torch.rand(3, 5, 5, generator=g, dtype=dtype)
    out = _call("mask_loss", fn, logits, torch.tensor([1, 3, 2]), targets)
    _expect_tensor("mask_loss", out, (), dtype)
    _expect("mask_loss", out.requires_grad, "a loss that depends on mask_logits (autograd)", out)


def _check_paste_masks(fn: Callable, dtype: torch.dtype) -> None:
    masks = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(8), dtype=dtype)
    boxes = torch.tensor([[2.3, 3.7, 12.2, 11.9], [10.0, 1.0, 23.5, 19.0]], dtype=dtype)
    out = _call("paste_masks", fn, masks, boxes, (20, 24))
    _expect_tensor("paste_masks", out, (2, 1, 20, 24), dtype)


_CHECKS: dict[str, Callable[[Callable, torch.dtype], None]] = {
    "roi_align": _check_roi_align,
    "fpn_level": _check_fpn_level,
    "anchors": _check_anchors,
    "box_iou": _check_box_iou,
    "encode_boxes": _check_encode_boxes,
    "decode_boxes": _check_decode_boxes,
    "matcher": _check_matcher,
    "sampler": _check_sampler,
    "nms": _check_nms,
    "batched_nms": _check_batched_nms,
    "mask_targets": _check_mask_targets,
    "mask_loss": _check_mask_loss,
    "paste_masks": _check_paste_masks,
}
