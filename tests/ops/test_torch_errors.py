"""Issue 12: refimpl's errors name the argument (ValueError/TypeError) and are also what
torchvision raises for the same mistake, so that code written for torchvision catches them:
RuntimeError (its kernels' checks and schema type checks), AssertionError (its boxes-shape
assertion), IndexError (a column that does not exist). Where torchvision imports, the same
call is made on it and must raise an exception our error is an instance of."""

from __future__ import annotations

import pytest
import torch

import refimpl.ops.torch as ops

X = torch.rand(1, 2, 6, 6)
ROIS = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]])
BOXES = torch.tensor([[0, 0, 4, 4.0], [1, 1, 5, 5]])

# (what, call(namespace), our classes, words of the message); the namespace is
# refimpl.ops.torch or torchvision.ops, which share these signatures
MISTAKES = [
    ("nms: scores of another length", lambda o: o.nms(BOXES, torch.rand(3), 0.5),
     (ValueError, RuntimeError), "scores"),
    ("nms: boxes [N, 3]", lambda o: o.nms(BOXES[:, :3], torch.rand(2), 0.5),
     (ValueError, RuntimeError), "boxes"),
    ("roi_align: boxes Tensor[K, 4]", lambda o: o.roi_align(X, ROIS[:, 1:], 2),
     (ValueError, AssertionError), "boxes"),
    ("roi_pool: a box list of [L, 5]", lambda o: o.roi_pool(X, [ROIS], 2),
     (ValueError, AssertionError), "boxes"),
    ("roi_align: 1-D boxes", lambda o: o.roi_align(X, ROIS[0], 2),
     (ValueError, IndexError), "boxes"),
    ("roi_align: 3-D input", lambda o: o.roi_align(X[0], ROIS, 2),
     (ValueError, RuntimeError), "input"),
    ("roi_align: integer input", lambda o: o.roi_align(X.long(), ROIS, 2),
     (TypeError, RuntimeError), "input"),
    ("box_iou: boxes [N, 3]", lambda o: o.box_iou(BOXES[:, :3], BOXES),
     (ValueError, IndexError), "boxes1"),
    ("batched_nms: idxs of another length",
     lambda o: o.batched_nms(BOXES, torch.rand(2), torch.tensor([0, 1, 1]), 0.5),
     (ValueError, RuntimeError), "idxs"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "classes", "words"), [m[1:] for m in MISTAKES],
                         ids=[m[0] for m in MISTAKES])  # fmt: skip
def test_errors_are_ours_and_torchvisions(call, classes, words):
    with pytest.raises(classes[0], match=words) as info:
        call(ops)
    for cls in classes:
        assert isinstance(info.value, cls), (type(info.value).__mro__, cls)


@pytest.mark.parametrize("call", [m[1] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_torchvision_raises_what_we_also_are(call):
    """The list above, measured: torchvision's own exception for each mistake."""
    tv = pytest.importorskip("torchvision.ops")
    with pytest.raises(Exception) as theirs:
        call(tv)
    with pytest.raises(Exception) as ours:
        call(ops)
    # torchvision's class (or a base of it) is one of ours: `except <theirs>` catches ours
    assert isinstance(ours.value, type(theirs.value)), (type(theirs.value), type(ours.value))
