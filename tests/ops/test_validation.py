"""Bad input gets a ValueError/TypeError naming the argument, on every backend, before any
kernel runs (the compiled kernels do not bounds-check)."""

from __future__ import annotations

import numpy as np
import pytest

X = np.zeros((2, 3, 5, 6), np.float32)
ROIS = np.array([[0, 1, 1, 3, 3], [1, 0, 0, 2, 4]], np.float32)
GRAD = np.zeros((2, 3, 2, 2), np.float32)

ROI_FUNCTIONS = [
    ("roi_align_forward", {}),
    ("roi_align_forward", {"pool_mode": "max"}),
    ("roi_pool_forward", {}),
    ("roi_warp_forward", {}),
    ("roi_align_backward", {"grad_output": GRAD}),
    ("roi_pool_backward", {"grad_output": GRAD}),
    ("roi_warp_backward", {"grad_output": GRAD}),
]


def call(backend, fn, extra, x=X, rois=ROIS, output_size=2, **kwargs):
    f = getattr(backend, fn)
    if fn.endswith("backward"):
        return f(x, rois, kwargs.pop("grad_output", extra["grad_output"]), output_size, **kwargs)
    return f(x, rois, output_size, **{**extra, **kwargs})


BAD_INPUTS = [
    # (description, keyword overrides, exception, words the message must contain)
    ("x rank 3", {"x": X[0]}, ValueError, "x"),
    ("x integer", {"x": X.astype(np.int32)}, TypeError, "x"),
    ("x float16", {"x": X.astype(np.float16)}, TypeError, "x"),
    ("x a list", {"x": X.tolist()}, TypeError, "x"),
    ("x empty plane", {"x": np.zeros((2, 3, 0, 6), np.float32)}, ValueError, "x"),
    ("rois [K, 4]", {"rois": ROIS[:, 1:]}, ValueError, "rois"),
    ("rois rank 1", {"rois": ROIS[0]}, ValueError, "rois"),
    ("rois integer", {"rois": ROIS.astype(np.int64)}, TypeError, "rois"),
    ("batch index out of range", {"rois": ROIS + [[2, 0, 0, 0, 0]]}, ValueError, "batch index"),
    ("batch index negative", {"rois": ROIS - [[1, 0, 0, 0, 0]]}, ValueError, "batch index"),
    ("batch index fractional", {"rois": ROIS + [[0.5, 0, 0, 0, 0]]}, ValueError, "batch index"),
    ("NaN coordinate", {"rois": ROIS + [[0, np.nan, 0, 0, 0]]}, ValueError, "rois"),
    ("infinite coordinate", {"rois": ROIS + [[0, 0, 0, np.inf, 0]]}, ValueError, "rois"),
    ("huge coordinate", {"rois": ROIS * [[1, 1, 1, 1, 1e9]]}, ValueError, "rois"),
    ("output_size 0", {"output_size": 0}, ValueError, "output_size"),
    ("output_size negative", {"output_size": (2, -1)}, ValueError, "output_size"),
    ("output_size triple", {"output_size": (2, 2, 2)}, ValueError, "output_size"),
    ("output_size float", {"output_size": 2.0}, TypeError, "output_size"),
    ("spatial_scale 0", {"spatial_scale": 0.0}, ValueError, "spatial_scale"),
    ("spatial_scale negative", {"spatial_scale": -0.25}, ValueError, "spatial_scale"),
    ("spatial_scale NaN", {"spatial_scale": float("nan")}, ValueError, "spatial_scale"),
    ("spatial_scale a string", {"spatial_scale": "1"}, TypeError, "spatial_scale"),
]


@pytest.mark.parametrize(
    ("fn", "extra"), ROI_FUNCTIONS, ids=lambda v: v if isinstance(v, str) else ""
)
@pytest.mark.parametrize(
    ("override", "error", "words"),
    [pytest.param(*rest, id=what) for what, *rest in BAD_INPUTS],
)
def test_bad_roi_arguments(backend, fn, extra, override, error, words):
    # output_size is checked before grad_output's shape, so backwards name it too.
    with pytest.raises(error, match=words):
        call(backend, fn, extra, **dict(override))


@pytest.mark.parametrize("fn", ["roi_align_forward", "roi_align_backward"])
def test_bad_roi_align_options(backend, fn):
    extra = {"grad_output": GRAD} if fn.endswith("backward") else {}
    with pytest.raises(ValueError, match="pool_mode"):
        call(backend, fn, extra, pool_mode="mean")
    with pytest.raises(TypeError, match="sampling_ratio"):
        call(backend, fn, extra, sampling_ratio=2.5)
    with pytest.raises(TypeError, match="aligned"):
        call(backend, fn, extra, aligned="yes")


def test_bad_roi_warp_pool_mode(backend):
    with pytest.raises(ValueError, match="pool_mode"):
        backend.roi_warp_forward(X, ROIS, 2, pool_mode="sum")


@pytest.mark.parametrize("fn", ["roi_align_backward", "roi_pool_backward", "roi_warp_backward"])
def test_bad_grad_output(backend, fn):
    f = getattr(backend, fn)
    with pytest.raises(ValueError, match="grad_output"):
        f(X, ROIS, GRAD[:, :, :1], 2)
    with pytest.raises(ValueError, match="grad_output"):
        f(X, ROIS, GRAD, 3)
    with pytest.raises(TypeError, match="grad_output"):
        f(X, ROIS, GRAD.astype(np.int32), 2)
    with pytest.raises(ValueError, match="grad_output"):
        f(X, ROIS, GRAD + np.nan, 2)


def test_bad_boxes(backend):
    boxes = np.array([[0, 0, 1, 1], [0, 0, 2, 2]], np.float32)
    scores = np.array([0.5, 0.2], np.float32)
    with pytest.raises(ValueError, match="boxes1"):
        backend.box_iou(boxes[:, :3], boxes)
    with pytest.raises(TypeError, match="boxes2"):
        backend.box_iou(boxes, boxes.astype(np.int64))
    with pytest.raises(ValueError, match="boxes2"):
        backend.box_iou(boxes, boxes + np.nan)
    with pytest.raises(ValueError, match="boxes"):
        backend.nms(boxes[None], scores, 0.5)
    with pytest.raises(ValueError, match="scores"):
        backend.nms(boxes, scores[:1], 0.5)
    with pytest.raises(ValueError, match="scores"):
        backend.nms(boxes, scores + np.inf, 0.5)
    with pytest.raises(TypeError, match="iou_threshold"):
        backend.nms(boxes, scores, "0.5")
    with pytest.raises(ValueError, match="iou_threshold"):
        backend.nms(boxes, scores, float("nan"))
