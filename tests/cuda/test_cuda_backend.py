"""The ``"cuda"`` backend (numba-cuda kernels) against the python backend and torchvision.

Runs in its own process, under the CUDA simulator or on a GPU:

    NUMBA_ENABLE_CUDASIM=1 .venv/bin/pytest tests/cuda

The simulator runs every GPU thread as Python, so the cases are small (a few hundred
threads per launch) but cover every op and mode, both dtypes, aligned and not, adaptive and
fixed sampling, boxes partly or wholly outside, zero-size and inverted, and more work than
one grid holds (the grid-stride loop). Without a device (no GPU and no
``NUMBA_ENABLE_CUDASIM=1``) the module is skipped at import.
"""

from __future__ import annotations

import numpy as np
import pytest

from refimpl.ops import BACKENDS
from tests.conftest import assert_close
from tests.cuda.device import require_device
from tests.fixtures.oracle import load_cases

pytestmark = pytest.mark.cudasim

numba_cuda = require_device()

cu = BACKENDS["cuda"]
from refimpl.ops.cuda import _launch  # noqa: E402

py = BACKENDS["python"]

DTYPES = (np.float32, np.float64)
OUT = (2, 3)
SCALE = 0.9  # not a power of two: the scaled coordinates are rounded, as in real use


def _rois(dtype):
    """Five boxes (image coordinates, scale 0.9 onto a 6x7 map) of every awkward kind."""
    return np.array(
        [
            [0, 0.3, 0.7, 5.2, 4.9],  # inside
            [1, -2.1, -1.3, 3.4, 8.7],  # partly outside (left, top and bottom)
            [1, 2.2, 3.1, 2.2, 3.1],  # zero size
            [0, 5.5, 4.4, 1.2, 0.9],  # inverted
            [1, 6.9, 5.8, 8.3, 7.1],  # near the far corner, partly beyond it
        ],
        dtype=dtype,
    )


def _inputs(dtype, seed=0, shape=(2, 3, 6, 7), n_rois=5, out=OUT):
    """x with distinct values (max modes are differentiable only away from ties)."""
    rng = np.random.default_rng(seed)
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(dtype) / 7 - 3
    grad = rng.normal(size=(n_rois, shape[1], *out)).astype(dtype)
    return x, grad


# --- against the python backend (the definition) -------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
@pytest.mark.parametrize("pool_mode", ["avg", "max"])
def test_roi_align_matches_python(dtype, aligned, sampling_ratio, pool_mode):
    x, grad = _inputs(dtype)
    rois = _rois(dtype)
    args = (OUT, SCALE, sampling_ratio, aligned, pool_mode)
    y = cu.roi_align_forward(x, rois, *args)
    assert y.dtype == dtype and y.shape == (5, 3, *OUT)
    assert_close(y, py.roi_align_forward(x, rois, *args))
    assert_close(
        cu.roi_align_backward(x, rois, grad, *args), py.roi_align_backward(x, rois, grad, *args)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("pool_mode", ["avg", "max"])
def test_roi_warp_matches_python(dtype, sampling_ratio, pool_mode):
    x, grad = _inputs(dtype, seed=1)
    rois = _rois(dtype)
    args = (OUT, SCALE, sampling_ratio, pool_mode)
    assert_close(cu.roi_warp_forward(x, rois, *args), py.roi_warp_forward(x, rois, *args))
    assert_close(
        cu.roi_warp_backward(x, rois, grad, *args), py.roi_warp_backward(x, rois, grad, *args)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 0.5, SCALE])
def test_roi_pool_matches_python(dtype, scale):
    x, grad = _inputs(dtype, seed=2)
    rois = _rois(dtype)
    rois[2, 1:] = [1.5, 2.5, 4.5, 2.5]  # .5 after scaling by 1: C rounding, away from zero
    y = cu.roi_pool_forward(x, rois, OUT, scale)
    assert y.dtype == dtype
    assert_close(y, py.roi_pool_forward(x, rois, OUT, scale))
    assert_close(
        cu.roi_pool_backward(x, rois, grad, OUT, scale),
        py.roi_pool_backward(x, rois, grad, OUT, scale),
    )


def test_overlapping_rois_accumulate(monkeypatch):
    """Many RoIs on the same pixels: the atomic adds must not lose updates. Also runs the
    grid-stride loop: one block of 32 threads for 8 * 2 * 3 * 4 = 192 elements."""
    monkeypatch.setattr(_launch, "MAX_BLOCKS", 1)
    monkeypatch.setattr(_launch, "THREADS_PER_BLOCK", 32)
    x, grad = _inputs(np.float64, seed=3, shape=(1, 2, 5, 5), n_rois=8, out=(3, 4))
    rois = np.tile([[0, 0.6, 0.4, 3.7, 3.9]], (8, 1))
    rois[:, 1:] += np.linspace(0, 0.7, 8)[:, None]
    for mode in ("avg", "max"):
        args = ((3, 4), 1.0, 2, False, mode)
        assert_close(cu.roi_align_forward(x, rois, *args), py.roi_align_forward(x, rois, *args))
        assert_close(
            cu.roi_align_backward(x, rois, grad, *args), py.roi_align_backward(x, rois, grad, *args)
        )
    assert_close(
        cu.roi_pool_backward(x, rois, grad, (3, 4)), py.roi_pool_backward(x, rois, grad, (3, 4))
    )


# The simulator evaluates 0 / 0 in NumPy, which warns; a GPU silently gives NaN.
NAN_WARNING = "ignore:invalid value encountered:RuntimeWarning"


@pytest.mark.filterwarnings(NAN_WARNING)
@pytest.mark.parametrize("dtype", DTYPES)
def test_box_iou_matches_python(dtype):
    rng = np.random.default_rng(4)
    a = rng.uniform(0, 10, (7, 4)).astype(dtype)
    a[:, 2:] += a[:, :2]
    b = rng.uniform(0, 10, (5, 4)).astype(dtype)
    b[:, 2:] += b[:, :2]
    b[0] = a[0]  # identical: IoU 1
    a[1] = b[1] = [3, 3, 3, 3]  # two empty boxes: 0 / 0 = NaN, as torchvision
    iou = cu.box_iou(a, b)
    assert iou.dtype == dtype and iou.shape == (7, 5)
    assert np.isnan(iou[1, 1]) and iou[0, 0] == 1
    np.testing.assert_array_equal(np.isnan(iou), np.isnan(py.box_iou(a, b)))
    assert_close(np.nan_to_num(iou), np.nan_to_num(py.box_iou(a, b)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_nms_matches_python(dtype, threshold):
    # 130 boxes: three 64-box tiles per side, so the mask has off-diagonal and partial tiles.
    rng = np.random.default_rng(5)
    boxes = rng.uniform(0, 40, (130, 4)).astype(dtype)
    boxes[:, 2:] = boxes[:, :2] + rng.uniform(1, 15, (130, 2)).astype(dtype)
    scores = rng.uniform(size=130).astype(dtype)
    scores[10:20] = scores[10]  # ties: the lower index comes first
    boxes[30:33] = boxes[29]  # identical boxes
    keep = cu.nms(boxes, scores, threshold)
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, py.nms(boxes, scores, threshold))


def test_nms_compares_iou_in_float64():
    # IoU 3/10 is float32(0.3) > 0.3 (torchvision compares in double): suppressed.
    boxes = np.array([[0, 0, 10, 1], [7, 0, 10, 1]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    np.testing.assert_array_equal(cu.nms(boxes, scores, 0.3), [0])
    np.testing.assert_array_equal(cu.nms(boxes.astype(np.float64), scores, 0.3), [0, 1])


def test_reduce_nms_mask_is_greedy():
    # Box 0 suppresses 1; 1 would suppress 2 but was suppressed itself, so 2 is kept;
    # box 2 suppresses 65 (second word, bit 1).
    mask = np.zeros(cu.boxes.nms_mask_shape(66), np.uint64)
    mask[0, 0] = 1 << 1
    mask[1, 0] = 1 << 2
    mask[2, 1] = 1 << 1
    keep = cu.boxes.reduce_nms_mask(mask)
    np.testing.assert_array_equal(keep, [0, *range(2, 65)])
    np.testing.assert_array_equal(cu.boxes.reduce_nms_mask(mask.view(np.int64)), keep)


def test_nms_mask_into_int64():
    # A torch op may hand an int64 mask (torch's uint64 support is thin): the same bits.
    cuda = numba_cuda
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 2, 2], [1, 1, 10, 11]], np.float64)
    mask = cuda.device_array(cu.boxes.nms_mask_shape(4), np.int64)
    cu.boxes.launch_nms_mask(cuda.to_device(boxes), mask, 0.5)
    # box 0 suppresses 1 and 3 (IoU 0.81, 0.74); box 1 suppresses 3 (IoU 0.9).
    np.testing.assert_array_equal(mask.copy_to_host(), [[0b1010], [0b1000], [0], [0]])
    np.testing.assert_array_equal(cu.boxes.reduce_nms_mask(mask.copy_to_host()), [0, 2])


# --- empty inputs and errors ----------------------------------------------------------------


def test_empty_inputs():
    x, _ = _inputs(np.float32)
    no_rois = np.zeros((0, 5), np.float32)
    assert cu.roi_align_forward(x, no_rois, OUT).shape == (0, 3, *OUT)
    assert cu.roi_pool_forward(x, no_rois, OUT).shape == (0, 3, *OUT)
    grad = np.zeros((0, 3, *OUT), np.float32)
    for g in (
        cu.roi_align_backward(x, no_rois, grad, OUT),
        cu.roi_warp_backward(x, no_rois, grad, OUT),
        cu.roi_pool_backward(x, no_rois, grad, OUT),
    ):
        assert g.shape == x.shape and g.dtype == x.dtype and not g.any()
    assert cu.box_iou(np.zeros((0, 4)), np.ones((3, 4))).shape == (0, 3)
    keep = cu.nms(np.zeros((0, 4)), np.zeros(0), 0.5)
    assert keep.shape == (0,) and keep.dtype == np.int64


def test_invalid_input_is_rejected_before_any_launch():
    x, _ = _inputs(np.float32)
    bad = _rois(np.float32)
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        cu.roi_align_forward(x, bad, OUT)
    bad = _rois(np.float32)
    bad[1, 0] = 2  # batch index out of range
    with pytest.raises(ValueError, match="batch index"):
        cu.roi_pool_forward(x, bad, OUT)


def test_clear_error_without_a_device(monkeypatch):
    monkeypatch.setattr(numba_cuda, "is_available", lambda: False)
    x, _ = _inputs(np.float32)
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM"):
        cu.roi_align_forward(x, _rois(np.float32), OUT)


# --- the launch layer, on device arrays -------------------------------------------------------


def test_launch_functions_on_device_arrays():
    cuda = numba_cuda
    x, grad = _inputs(np.float64, seed=6)
    rois = _rois(np.float64)
    stream = cuda.stream()
    x_d, rois_d, grad_d = (cuda.to_device(a, stream=stream) for a in (x, rois, grad))
    out = cuda.device_array((5, 3, *OUT), np.float64, stream=stream)
    cu.roi_align.launch_forward(x_d, rois_d, out, SCALE, 2, True, "max", stream=stream)
    grad_x = cuda.to_device(np.zeros_like(x), stream=stream)
    cu.roi_warp.launch_backward(x_d, rois_d, grad_d, grad_x, SCALE, 2, "avg", stream=stream)
    stream.synchronize()
    assert_close(out.copy_to_host(), py.roi_align_forward(x, rois, OUT, SCALE, 2, True, "max"))
    assert_close(grad_x.copy_to_host(), py.roi_warp_backward(x, rois, grad, OUT, SCALE, 2, "avg"))

    # grad_x is accumulated into: a second launch doubles it.
    cu.roi_warp.launch_backward(x_d, rois_d, grad_d, grad_x, SCALE, 2, "avg")
    assert_close(
        grad_x.copy_to_host(), 2 * py.roi_warp_backward(x, rois, grad, OUT, SCALE, 2, "avg")
    )


def test_launch_functions_check_shapes_and_dtypes():
    cuda = numba_cuda
    x = cuda.to_device(np.zeros((1, 2, 4, 4), np.float32))
    rois = cuda.to_device(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="out must have shape"):
        cu.roi_align.launch_forward(
            x, rois, cuda.device_array((3, 1, 2, 2), np.float32), 1.0, -1, False
        )
    with pytest.raises(TypeError, match="out must have dtype float32"):
        cu.roi_pool.launch_forward(x, rois, cuda.device_array((3, 2, 2, 2), np.float64), 1.0)
    with pytest.raises(TypeError, match="rois must have dtype float32"):
        cu.roi_pool.launch_forward(
            x, cuda.to_device(np.zeros((3, 5))), cuda.device_array((3, 2, 2, 2), np.float32), 1.0
        )
    with pytest.raises(ValueError, match="grad_x must have shape"):
        cu.roi_pool.launch_backward(
            x,
            rois,
            cuda.device_array((3, 2, 2, 2), np.float32),
            cuda.device_array((1, 2, 4, 3), np.float32),
            1.0,
        )
    with pytest.raises(ValueError, match="spatial_scale"):
        cu.roi_pool.launch_forward(x, rois, cuda.device_array((3, 2, 2, 2), np.float32), 0.0)
    with pytest.raises(ValueError, match="pool_mode"):
        cu.roi_align.launch_forward(
            x, rois, cuda.device_array((3, 2, 2, 2), np.float32), 1.0, -1, False, "sum"
        )
    with pytest.raises(TypeError, match="device array"):
        cu.roi_pool.launch_forward(
            np.zeros((1, 2, 4, 4), np.float32),
            rois,
            cuda.device_array((3, 2, 2, 2), np.float32),
            1.0,
        )
    with pytest.raises(ValueError, match="mask must have shape"):
        cu.boxes.launch_nms_mask(
            cuda.to_device(np.zeros((65, 4))), cuda.device_array((65, 1), np.uint64), 0.5
        )


# --- against torchvision, through the committed fixtures (a few small cases) ------------------


def _small_cases(op, per_group=3, max_outputs=100):
    """Up to ``per_group`` cases per (dtype, aligned) with at most ``max_outputs`` outputs:
    the simulator's time grows with the number of threads."""
    chosen, seen = [], {}
    for case in load_cases(op):
        if case["y"].size > max_outputs:
            continue
        group = (case["dtype"], case.get("aligned"))
        if seen.get(group, 0) < per_group:
            seen[group] = seen.get(group, 0) + 1
            chosen.append(case)
    return chosen


def _roi_case_args(case):
    args = [tuple(case["output_size"]), case["spatial_scale"]]
    if case["op"] == "roi_align":
        args += [case["sampling_ratio"], case["aligned"], case.get("pool_mode", "avg")]
    elif case["op"] == "roi_warp":
        args += [case["sampling_ratio"], case.get("pool_mode", "avg")]
    return args


@pytest.mark.parametrize(
    "case",
    [c for op in ("roi_align", "roi_pool", "roi_warp") for c in _small_cases(op)],
    ids=lambda c: c["id"],
)
def test_roi_ops_match_torchvision(case):
    op, args = case["op"], _roi_case_args(case)
    y = getattr(cu, f"{op}_forward")(case["x"], case["rois"], *args)
    assert_close(y, case["y"], err_msg=f"{op} forward")
    g = getattr(cu, f"{op}_backward")(case["x"], case["rois"], case["grad_out"], *args)
    assert_close(g, case["grad_x"], err_msg=f"{op} backward")


@pytest.mark.filterwarnings(NAN_WARNING)
@pytest.mark.parametrize("case", load_cases("box_iou"), ids=lambda c: c["id"])
def test_box_iou_matches_torchvision(case):
    iou = cu.box_iou(case["boxes1"], case["boxes2"])
    np.testing.assert_array_equal(np.isnan(iou), np.isnan(case["iou"]))
    assert_close(np.nan_to_num(iou), np.nan_to_num(case["iou"]))


@pytest.mark.parametrize("case", load_cases("nms"), ids=lambda c: c["id"])
def test_nms_matches_torchvision(case):
    keep = cu.nms(case["boxes"], case["scores"], case["iou_threshold"])
    np.testing.assert_array_equal(keep, case["keep"])
