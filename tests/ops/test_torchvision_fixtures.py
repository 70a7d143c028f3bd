"""Every CPU backend against torchvision 0.29's kernels, through the committed fixtures.

The fixtures are made by tests/fixtures/make_torchvision_fixtures.py in a separate
environment with torchvision; this test needs only NumPy. Tolerances: 1e-9 in float64,
1e-5 in float32 (positions and weights are computed in float32 in torchvision's order).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import assert_close
from tests.fixtures.oracle import load_cases, load_meta

ROI_OPS = ("roi_align", "roi_pool", "roi_warp")
CASES = load_cases()


def _case_id(case):
    return case["id"]


def _roi_args(case):
    args = [tuple(case["output_size"]), case["spatial_scale"]]
    if case["op"] == "roi_align":
        args += [case["sampling_ratio"], case["aligned"], "avg"]
    elif case["op"] == "roi_warp":
        args += [case["sampling_ratio"], "avg"]
    return args


def test_fixtures_cover_what_the_spec_asks_for():
    meta = load_meta()
    assert meta["torchvision"].startswith("0.")
    roi_align = [c for c in CASES if c["op"] == "roi_align"]
    assert {c["aligned"] for c in roi_align} == {False, True}
    assert {c["sampling_ratio"] for c in roi_align} >= {-1, 0, 1, 2, 3}
    assert {c["dtype"] for c in CASES} == {"float32", "float64"}
    assert {c["op"] for c in CASES} >= {*ROI_OPS, "box_iou", "nms", "batched_nms"}
    assert any(c["x"].shape[0] and c["rois"].shape[0] == 0 for c in roi_align)


@pytest.mark.parametrize("case", [c for c in CASES if c["op"] in ROI_OPS], ids=_case_id)
def test_roi_op_forward_and_backward(backend, case):
    if backend.__name__.endswith(".python") and case["x"].size * case["rois"].shape[0] > 20000:
        pytest.skip("too large for the slow python backend; the others cover it")
    op = case["op"]
    args = _roi_args(case)
    y = getattr(backend, f"{op}_forward")(case["x"], case["rois"], *args)
    assert y.dtype == case["x"].dtype
    assert_close(y, case["y"], err_msg=f"{op} forward")
    g = getattr(backend, f"{op}_backward")(case["x"], case["rois"], case["grad_out"], *args)
    assert_close(g, case["grad_x"], err_msg=f"{op} backward")


@pytest.mark.parametrize("case", [c for c in CASES if c["op"] == "box_iou"], ids=_case_id)
def test_box_iou(backend, case):
    assert_close(backend.box_iou(case["boxes1"], case["boxes2"]), case["iou"])


@pytest.mark.parametrize("case", [c for c in CASES if c["op"] == "nms"], ids=_case_id)
def test_nms(backend, case):
    keep = backend.nms(case["boxes"], case["scores"], case["iou_threshold"])
    np.testing.assert_array_equal(keep, case["keep"])
