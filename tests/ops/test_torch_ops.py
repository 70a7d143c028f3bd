"""The torch operators (torch.ops.refimpl.*): registration, autograd, tracing, public API.

The kernels' numerics are tested backend by backend elsewhere; here: that the custom ops are
registered correctly (``torch.library.opcheck``), that their autograd formulas are the
gradients of their forwards (``gradcheck``), that ``torch.compile`` and ``torch.export`` trace
them, that the public functions behave like torchvision's (the committed torchvision
fixtures, and torchvision itself where it imports), and the CUDA kernels against the CPU
ones where a GPU exists.
"""

from __future__ import annotations

import pytest
import torch

import refimpl.ops as T
from refimpl.ops import (
    BACKENDS,
    LevelMapper,
    MultiScaleRoIAlign,
    RoIAlign,
    RoIPool,
    RoIWarp,
    infer_scale,
)

ops = torch.ops.refimpl
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOL = {torch.float32: 1e-5, torch.float64: 1e-9}
X_SHAPE = (2, 3, 7, 8)
OUT = (2, 3)


def _x(dtype=torch.float64, shape=X_SHAPE, seed=0, device="cpu"):
    """Random values: max modes are differentiable only away from ties, and not even sums of
    bilinear samples of the values tie (as they can for an arithmetic progression)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    return x.to(dtype=dtype, device=device)


def _off_lattice(v: torch.Tensor) -> torch.Tensor:
    # Sampling points on integer or half-integer feature coordinates sit on kinks of the
    # piecewise-linear bilinear weights (and on RoIPool's rounding ties): nudge them away.
    frac = torch.remainder(v * 2, 1.0)
    return torch.where((frac < 0.05) | (frac > 0.95), v + 0.11, v)


def _rois(dtype=torch.float64, k=4, n_images=2, h=7, w=8, scale=1.0, seed=1, device="cpu"):
    """Random boxes, mostly inside the map, some partly outside; not on the pixel lattice."""
    g = torch.Generator().manual_seed(seed)
    x1 = torch.rand(k, generator=g, dtype=torch.float64) * (w - 1.5) - 0.7
    y1 = torch.rand(k, generator=g, dtype=torch.float64) * (h - 1.5) - 0.7
    x2 = x1 + 0.8 + torch.rand(k, generator=g, dtype=torch.float64) * (w - x1)
    y2 = y1 + 0.8 + torch.rand(k, generator=g, dtype=torch.float64) * (h - y1)
    boxes = _off_lattice(torch.stack([x1, y1, x2, y2], dim=1)) / scale
    batch = torch.arange(k, dtype=torch.float64).remainder(n_images)[:, None]
    return torch.cat([batch, boxes], dim=1).to(dtype=dtype, device=device)


def _boxes(n=12, dtype=torch.float64, seed=2, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 20
    wh = 2 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 10
    return torch.cat([xy, xy + wh], dim=1).to(dtype=dtype, device=device)


def _scores(n=12, dtype=torch.float64, seed=3, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


# (name, public function, extra positional arguments after output_size)
ROI_FUNCS = {
    "align_avg": (T.roi_align, (0.5, -1, False, "avg")),
    "align_avg_aligned": (T.roi_align, (0.5, 2, True, "avg")),
    "align_max": (T.roi_align, (0.5, 2, False, "max")),
    "pool": (T.roi_pool, (0.5,)),
    "warp_avg": (T.roi_warp, (0.5, 2, "avg")),
    "warp_max": (T.roi_warp, (0.5, -1, "max")),
}


def _op_args(name, x, rois):
    """The custom op and its positional arguments for the public function ``name``."""
    ph, pw = OUT
    if name.startswith("align"):
        scale, sr, aligned, mode = ROI_FUNCS[name][1]
        return ops.roi_align.default, (x, rois, scale, ph, pw, sr, aligned, mode)
    if name == "pool":
        return ops.roi_pool.default, (x, rois, 0.5, ph, pw)
    scale, sr, mode = ROI_FUNCS[name][1]
    return ops.roi_warp.default, (x, rois, scale, ph, pw, sr, mode)


def _backward_op_args(name, x, rois, grad):
    ph, pw = OUT
    n, c, h, w = x.shape
    if name.startswith("align"):
        scale, sr, aligned, mode = ROI_FUNCS[name][1]
        saved = x if mode == "max" else None
        return ops.roi_align_backward.default, (
            grad,
            saved,
            rois,
            scale,
            ph,
            pw,
            n,
            c,
            h,
            w,
            sr,
            aligned,
            mode,
        )
    if name == "pool":
        _, argmax = ops.roi_pool.default(x, rois, 0.5, ph, pw)
        return ops.roi_pool_backward.default, (grad, rois, argmax, 0.5, ph, pw, n, c, h, w)
    scale, sr, mode = ROI_FUNCS[name][1]
    saved = x if mode == "max" else None
    return ops.roi_warp_backward.default, (grad, saved, rois, scale, ph, pw, n, c, h, w, sr, mode)


def _call(name, x, boxes):
    fn, extra = ROI_FUNCS[name]
    return fn(x, boxes, OUT, *extra)


# --- registration: opcheck ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ROI_FUNCS)
def test_opcheck_roi_ops(name, dtype):
    x = _x(dtype).requires_grad_(True)
    op, args = _op_args(name, x, _rois(dtype, scale=0.5))
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["align_avg", "align_max", "pool", "warp_avg", "warp_max"])
def test_opcheck_backward_ops(name, dtype):
    x = _x(dtype)
    rois = _rois(dtype, scale=0.5)
    grad = torch.randn(rois.shape[0], x.shape[1], *OUT, dtype=dtype)
    op, args = _backward_op_args(name, x, rois, grad)
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_opcheck_nms_and_box_iou(dtype):
    boxes = _boxes(dtype=dtype)
    torch.library.opcheck(ops.nms.default, (boxes, _scores(dtype=dtype), 0.3))
    torch.library.opcheck(ops.box_iou.default, (boxes, _boxes(5, dtype=dtype, seed=7)))


def test_opcheck_float16_and_empty():
    x = _x(torch.float16).requires_grad_(True)
    torch.library.opcheck(
        ops.roi_align.default, (x, _rois(torch.float32), 1.0, 2, 3, 2, False, "avg")
    )
    empty = torch.zeros((0, 5), dtype=torch.float64)
    torch.library.opcheck(
        ops.roi_align.default, (_x().requires_grad_(True), empty, 1.0, 2, 3, -1, False, "max")
    )
    torch.library.opcheck(ops.nms.default, (torch.zeros((0, 4)), torch.zeros(0), 0.5))


# --- autograd: gradcheck -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["align_avg", "align_avg_aligned", "align_max", "pool", "warp_avg", "warp_max"]
)
def test_gradcheck(name):
    x = _x(torch.float64).requires_grad_(True)
    rois = _rois(torch.float64, scale=0.5)
    assert torch.autograd.gradcheck(lambda t: _call(name, t, rois), (x,))


def test_boxes_get_no_gradient_and_avg_keeps_no_input():
    x = _x().requires_grad_(True)
    rois = _rois(scale=0.5).requires_grad_(True)
    y = T.roi_align(x, rois, OUT, 0.5, 2)
    # The average saves only the RoIs: autograd does not keep the feature map alive for it.
    assert [None if t is None else t.shape for t in y.grad_fn.saved_tensors] == [None, rois.shape]
    y_max = T.roi_align(x, rois, OUT, 0.5, 2, pool_mode="max")
    assert [t.shape for t in y_max.grad_fn.saved_tensors] == [x.shape, rois.shape]
    (y.sum() + y_max.sum()).backward()
    assert x.grad is not None and rois.grad is None


def test_roi_pool_saves_its_argmax_as_torchvision():
    """refimpl::roi_pool returns (output, argmax) and its backward scatters through the
    argmax (torchvision's operator signatures): autograd keeps the argmax, not the input."""
    x = _x().requires_grad_(True)
    rois = _rois(scale=0.5)
    y, argmax = ops.roi_pool.default(x, rois, 0.5, *OUT)
    py = BACKENDS["python"]
    y_ref, argmax_ref = py.roi_pool_forward_with_argmax(x.detach().numpy(), rois.numpy(), OUT, 0.5)
    torch.testing.assert_close(y, torch.from_numpy(y_ref), rtol=0, atol=0)
    assert argmax.dtype == torch.int64 and torch.equal(argmax, torch.from_numpy(argmax_ref))
    assert (argmax >= 0).all()  # these boxes have no empty bin
    saved = T.roi_pool(x, rois, OUT, 0.5).grad_fn.saved_tensors
    assert [t.dtype for t in saved] == [rois.dtype, torch.int64]  # rois and argmax, no input
    grad = torch.randn_like(y)
    n, c, h, w = x.shape
    g = ops.roi_pool_backward.default(grad, rois, argmax, 0.5, *OUT, n, c, h, w)
    g_ref = py.roi_pool_backward(x.detach().numpy(), rois.numpy(), grad.numpy(), OUT, 0.5)
    torch.testing.assert_close(g, torch.from_numpy(g_ref))


def test_roi_pool_backward_checks_the_argmax():
    x, rois = _x(), _rois(scale=0.5)
    _, argmax = ops.roi_pool.default(x, rois, 0.5, *OUT)
    grad = torch.ones(argmax.shape, dtype=x.dtype)
    args = (0.5, *OUT, *x.shape)
    bad = argmax.clone()
    bad[0, 0, 0, 0] = x.shape[2] * x.shape[3]  # one past the plane: a write outside grad_x
    with pytest.raises(ValueError, match=r"argmax must lie in \[-1, 56\)"):
        ops.roi_pool_backward.default(grad, rois, bad, *args)
    bad[0, 0, 0, 0] = -2
    with pytest.raises(ValueError, match="argmax must lie in"):
        ops.roi_pool_backward.default(grad, rois, bad, *args)
    with pytest.raises(TypeError, match="argmax must be an int64"):
        ops.roi_pool_backward.default(grad, rois, argmax.int(), *args)
    with pytest.raises(ValueError, match="argmax must have grad's shape"):
        ops.roi_pool_backward.default(grad, rois, argmax[:1], *args)


def test_backward_without_input_grad_is_skipped():
    rois = _rois(scale=0.5)
    x = _x()
    w = torch.ones((), dtype=torch.float64, requires_grad=True)
    y = T.roi_pool(x, rois, OUT, 0.5) * w  # x needs no gradient; only w does
    y.sum().backward()
    assert w.grad is not None


# --- the public functions ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ROI_FUNCS)
def test_list_of_boxes_equals_roi_tensor(name):
    x = _x()
    rois = _rois(k=5, scale=0.5)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    expected = _call(name, x, torch.cat([rois[rois[:, 0] == i] for i in range(2)]))
    torch.testing.assert_close(_call(name, x, per_image), expected, rtol=0, atol=0)
    converted = T.convert_boxes_to_roi_format(per_image)
    assert converted.shape == (5, 5)
    assert converted[:, 0].tolist() == sorted(rois[:, 0].tolist())


def test_boxes_cast_to_input_dtype_and_non_contiguous_input():
    x = _x(torch.float32, shape=(2, 8, 3, 7)).permute(0, 2, 1, 3)  # [2, 3, 8, 7], strided
    assert not x.is_contiguous()
    rois = _rois(torch.float64, h=8, w=7)
    y = T.roi_align(x, rois, OUT, 1.0, 2)
    assert y.dtype == torch.float32
    expected = T.roi_align(x.contiguous(), rois.float(), OUT, 1.0, 2)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["align_avg", "align_max", "pool", "warp_max"])
def test_half_precision_is_computed_in_float32(name, dtype):
    x32 = _x(torch.float32) / 10
    rois = _rois(torch.float32, scale=0.5)
    x16 = x32.to(dtype).requires_grad_(True)
    y = _call(name, x16, rois)
    assert y.dtype == dtype
    expected = _call(name, x16.detach().float(), rois).to(dtype)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    y.float().sum().backward()
    assert x16.grad.dtype == dtype and torch.isfinite(x16.grad.float()).all()


def test_nms_box_iou_batched_nms():
    boxes, scores = _boxes(30), _scores(30)
    keep = T.nms(boxes, scores, 0.3)
    assert keep.dtype == torch.int64
    # Greedy by hand: scores decreasing; suppressed if IoU > threshold with a kept box.
    iou = T.box_iou(boxes, boxes)
    expected = []
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        if all(iou[i, j] <= 0.3 for j in expected):
            expected.append(i)
    assert keep.tolist() == expected
    # box_iou by hand for one pair
    a, b = boxes[0], boxes[1]
    inter = (torch.min(a[2:], b[2:]) - torch.max(a[:2], b[:2])).clamp(min=0).prod()
    area = (a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod()
    torch.testing.assert_close(iou[0, 1], inter / (area - inter))
    # batched: per category, never across categories; negative coordinates too
    idxs = torch.arange(30) % 3
    for shift in (0.0, -50.0):
        shifted = boxes + shift
        got = T.batched_nms(shifted, scores, idxs, 0.3)
        kept = torch.zeros(30, dtype=torch.bool)
        for c in range(3):
            members = torch.where(idxs == c)[0]
            kept[members[T.nms(shifted[members], scores[members], 0.3)]] = True
        want = torch.where(kept)[0]
        want = want[torch.argsort(scores[want], descending=True, stable=True)]
        assert got.tolist() == want.tolist()
    assert T.batched_nms(boxes[:0], scores[:0], idxs[:0], 0.5).shape == (0,)


def test_box_iou_dtypes():
    b = _boxes(4, dtype=torch.float32)
    assert T.box_iou(b, b.double()).dtype == torch.float64
    assert T.box_iou(b.half(), b.half()).dtype == torch.float16
    ints = b.round().to(torch.int64)
    torch.testing.assert_close(T.box_iou(ints, ints), T.box_iou(ints.float(), ints.float()))


# --- errors: named arguments -------------------------------------------------------------------


def test_errors_name_the_argument():
    x, rois = _x(), _rois()
    with pytest.raises(TypeError, match="input"):
        T.roi_align(x.to(torch.int64), rois, OUT)
    with pytest.raises(TypeError, match="boxes"):
        T.roi_align(x, rois.to(torch.int64), OUT)
    with pytest.raises(ValueError, match="boxes"):
        T.roi_align(x, rois[:, 1:], OUT)
    with pytest.raises(ValueError, match="input"):
        T.roi_pool(x[0], rois, OUT)
    with pytest.raises(ValueError, match=r"boxes\[1\]"):
        T.roi_align(x, [rois[:2, 1:], rois[:2]], OUT)
    with pytest.raises(TypeError, match="boxes"):
        T.roi_align(x, "boxes", OUT)
    with pytest.raises(ValueError, match="output_size"):
        T.roi_align(x, rois, (0, 2))
    with pytest.raises(ValueError, match="spatial_scale"):
        T.roi_pool(x, rois, OUT, -1.0)
    with pytest.raises(TypeError, match="sampling_ratio"):
        T.roi_warp(x, rois, OUT, 1.0, 1.5)
    with pytest.raises(ValueError, match="pool_mode"):
        T.roi_align(x, rois, OUT, pool_mode="median")
    with pytest.raises(TypeError, match="aligned"):
        T.roi_align(x, rois, OUT, aligned="yes")
    # content checks (refimpl.ops.validate, on the [K, 5] form of the boxes: "rois")
    bad = rois.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"rois.*finite"):
        T.roi_align(x, bad, OUT)
    bad = rois.clone()
    bad[0, 0] = 2
    with pytest.raises(ValueError, match=r"rois\[:, 0\]"):
        T.roi_pool(x, bad, OUT)
    with pytest.raises(ValueError, match="scores"):
        T.nms(_boxes(5), _scores(4), 0.5)
    with pytest.raises(TypeError, match="boxes"):
        T.nms(_boxes(5).to(torch.int64), _scores(5), 0.5)
    with pytest.raises(ValueError, match=r"boxes.*finite"):
        T.nms(torch.full((2, 4), float("inf")), _scores(2), 0.5)
    with pytest.raises(TypeError, match="idxs"):
        T.batched_nms(_boxes(5), _scores(5), _scores(5), 0.5)


def test_wrong_device_is_a_clear_error():
    # No second real device here: the meta device stands in for "not input's device".
    x, rois = _x(), _rois()
    with pytest.raises(ValueError, match="boxes must be on the same device as input"):
        T.roi_align(x, rois.to("meta"), OUT)
    with pytest.raises(ValueError, match=r"boxes\[0\] must be on the same device"):
        T.roi_pool(x, [rois[:2, 1:].to("meta")], OUT)
    with pytest.raises(ValueError, match="scores must be on the same device as boxes"):
        T.nms(_boxes(5), _scores(5).to("meta"), 0.5)
    with pytest.raises(ValueError, match="boxes2 must be on the same device as boxes1"):
        T.box_iou(_boxes(5), _boxes(5).to("meta"))
    with pytest.raises(ValueError, match="rois must be on the same device as input"):
        ops.roi_align.default(x.to("meta"), rois, 1.0, 2, 2, -1, False, "avg")


# --- tracing: torch.compile and torch.export ---------------------------------------------------


def _detect(x, rois, boxes, scores):
    a = T.roi_align(x, rois, OUT, 0.5, 2, pool_mode="max")
    p = T.roi_pool(x, rois, OUT, 0.5)
    keep = T.nms(boxes, scores, 0.5)
    return a + p, boxes[keep]


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x = _x(torch.float32).requires_grad_(True)
    args = (_rois(torch.float32, scale=0.5), _boxes(10, torch.float32), _scores(10, torch.float32))
    try:
        compiled = torch.compile(_detect, fullgraph=True, backend="inductor")
        y, kept = compiled(x, *args)
    except Exception as err:  # no usable C++ toolchain for inductor: trace with aot_eager
        if "inductor" not in type(err).__module__ and "CppCompileError" not in repr(err):
            raise
        torch._dynamo.reset()
        compiled = torch.compile(_detect, fullgraph=True, backend="aot_eager")
        y, kept = compiled(x, *args)
    y_eager, kept_eager = _detect(x, *args)
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(kept, kept_eager)
    (g,) = torch.autograd.grad(y.sum(), x)
    (g_eager,) = torch.autograd.grad(y_eager.sum(), x)
    torch.testing.assert_close(g, g_eager)


def test_torch_export():
    class Head(torch.nn.Module):
        def forward(self, x, rois, boxes, scores):
            pooled = T.roi_align(x, rois, OUT, 0.5, 2) + T.roi_warp(x, rois, OUT, 0.5)
            return pooled, T.nms(boxes, scores, 0.5)

    args = (_x(), _rois(scale=0.5), _boxes(8), _scores(8))
    exported = torch.export.export(Head(), args)
    names = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert {"refimpl.roi_align.default", "refimpl.nms.default"} <= names
    for got, want in zip(exported.module()(*args), Head()(*args), strict=True):
        torch.testing.assert_close(got, want)


# --- modules ------------------------------------------------------------------------------------


def test_modules_match_the_functions():
    x, rois = _x(), _rois(scale=0.5)
    torch.testing.assert_close(
        RoIAlign(OUT, 0.5, 2, aligned=True)(x, rois), T.roi_align(x, rois, OUT, 0.5, 2, True)
    )
    torch.testing.assert_close(RoIPool(OUT, 0.5)(x, rois), T.roi_pool(x, rois, OUT, 0.5))
    torch.testing.assert_close(RoIWarp(OUT, 0.5)(x, rois), T.roi_warp(x, rois, OUT, 0.5))
    assert "pool_mode='avg'" in repr(RoIAlign(7, 1 / 16, 2))


def _pyramid(image=64, channels=2):
    # P2..P5 of a 64x64 (padded) image: strides 4, 8, 16, 32; plus a map that is not pooled.
    feats = {f"p{k}": _x(shape=(2, channels, image >> k, image >> k), seed=k) for k in (2, 3, 4, 5)}
    feats["pool"] = torch.zeros(2, channels, 1, 1)
    return feats


def test_level_mapper_fpn_eq1_by_hand():
    # floor(4 + log2(sqrt(area) / 224) + 1e-6), clamped to [2, 5], minus k_min = 2
    sides = {
        56.0: 0,
        111.9: 0,
        112.0: 1,
        223.9: 1,
        224.0: 2,
        447.0: 2,
        448.0: 3,
        2000.0: 3,
        10.0: 0,
        0.0: 0,
    }
    boxes = torch.tensor([[5.0, 7.0, 5.0 + s, 7.0 + s] for s in sides])
    levels = LevelMapper(2, 5)([boxes[:4], boxes[4:]])
    assert levels.tolist() == list(sides.values())
    # A non-square box: sqrt(w h) decides (100 x 502 -> sqrt = 224.05 -> P4)
    assert LevelMapper(2, 5)([torch.tensor([[0.0, 0.0, 100.0, 502.0]])]).tolist() == [2]
    # A smaller canonical size spreads small RoIs (28 -> P4 with canonical 28)
    assert LevelMapper(2, 5, canonical_scale=28)([torch.tensor([[0.0, 0, 28, 28]])]).tolist() == [2]
    # An inverted box (negative area) goes to the finest level, not nowhere
    assert LevelMapper(2, 5)([torch.tensor([[10.0, 10.0, 0.0, 20.0]])]).tolist() == [0]


def test_infer_scale():
    assert infer_scale((16, 16), (64, 64)) == 0.25
    assert infer_scale((25, 38), (800, 1216)) == 1 / 32  # 1/32 and 1/32.0 after padding
    assert infer_scale((50, 76), (797, 1199)) == 1 / 16  # unpadded: still the power of two


def test_multiscale_roi_align_assigns_levels_by_hand():
    feats = _pyramid()
    # canonical_scale 32 on a 64x64 image: side 8 -> P2, 16 -> P3, 32 -> P4, 64 -> P5
    boxes = [
        torch.tensor([[1.3, 2.2, 9.3, 10.2], [10.1, 3.3, 42.1, 35.3]]),  # sides 8, 32
        torch.tensor([[0.4, 0.7, 64.4, 64.7], [20.2, 30.1, 36.2, 46.1], [5.5, 5.5, 7.5, 9.5]]),
    ]  # sides 64, 16, sqrt(8) -> P5, P3, P2 (clamped)
    expected_level = [2, 4, 5, 3, 2]
    pooler = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], OUT, 2, canonical_scale=32)
    y = pooler(feats, boxes, [(64, 60), (58, 64)])
    assert pooler.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    rois = T.convert_boxes_to_roi_format(boxes)
    for k, level in enumerate(expected_level):
        want = T.roi_align(feats[f"p{level}"], rois[k : k + 1], OUT, 2.0**-level, 2)
        torch.testing.assert_close(y[k : k + 1], want, rtol=0, atol=0)
    # the default canonical scale (224) puts all of these small boxes on P2
    y224 = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], OUT, 2)(feats, boxes, [(64, 64)] * 2)
    torch.testing.assert_close(y224, T.roi_align(feats["p2"], rois, OUT, 0.25, 2))


def test_multiscale_variants_and_gradient():
    feats = _pyramid()
    feats = {k: v.requires_grad_(True) for k, v in feats.items()}
    boxes = [torch.tensor([[1.3, 2.2, 9.3, 10.2], [10.1, 3.3, 42.1, 35.3]])]
    for kwargs in ({"roi_op": "warp"}, {"roi_op": "pool"}, {"aligned": True, "pool_mode": "max"}):
        pooler = MultiScaleRoIAlign(["p2", "p3"], 3, -1, canonical_scale=16, **kwargs)
        y = pooler(feats, boxes, [(64, 64)])
        assert y.shape == (2, 2, 3, 3)
        y.sum().backward()
    assert feats["p2"].grad is not None and feats["p3"].grad is not None
    assert feats["p4"].grad is None
    single = MultiScaleRoIAlign(["p3"], 3, 2)(feats, boxes, [(64, 64)])
    torch.testing.assert_close(single, T.roi_align(feats["p3"], boxes, 3, 1 / 8, 2))
    with pytest.raises(ValueError, match="roi_op"):
        MultiScaleRoIAlign(["p2"], 3, 2, roi_op="crop")
    with pytest.raises(ValueError, match="aligned"):
        MultiScaleRoIAlign(["p2"], 3, 2, roi_op="pool", aligned=True)


# --- against torchvision: the committed fixtures, and torchvision itself -----------------------


def _fixture_cases(op):
    try:
        from tests.fixtures.oracle import load_cases
    except ImportError:
        return []
    return load_cases(op)


FIXTURES = [c for op in ("roi_align", "roi_pool", "roi_warp") for c in _fixture_cases(op)]


def _fixture_call(case, x, rois):
    out, scale = tuple(case["output_size"]), case["spatial_scale"]
    if case["op"] == "roi_align":
        return T.roi_align(
            x, rois, out, scale, case["sampling_ratio"], case["aligned"], case["pool_mode"]
        )
    if case["op"] == "roi_pool":
        return T.roi_pool(x, rois, out, scale)
    return T.roi_warp(x, rois, out, scale, case["sampling_ratio"], case["pool_mode"])


@pytest.mark.skipif(not FIXTURES, reason="no torchvision fixtures (tests/fixtures/oracle.py)")
def test_torchvision_fixtures_roi_ops():
    """Every RoI fixture case, forward and autograd gradient, through the torch ops."""
    for case in FIXTURES:
        x = torch.from_numpy(case["x"]).requires_grad_(True)
        tol = TOL[x.dtype]
        y = _fixture_call(case, x, torch.from_numpy(case["rois"]))
        msg = f"{case['id']} ({case.get('note', '')})"
        torch.testing.assert_close(
            y, torch.from_numpy(case["y"]), rtol=tol, atol=tol, msg=lambda m, s=msg: f"{s}: {m}"
        )
        (g,) = torch.autograd.grad(y, x, torch.from_numpy(case["grad_out"]), allow_unused=True)
        g = torch.zeros_like(x) if g is None else g
        torch.testing.assert_close(
            g,
            torch.from_numpy(case["grad_x"]),
            rtol=tol,
            atol=tol,
            msg=lambda m, s=msg: f"{s} gradient: {m}",
        )


@pytest.mark.skipif(not _fixture_cases("nms"), reason="no torchvision fixtures")
def test_torchvision_fixtures_nms_box_iou():
    for case in _fixture_cases("nms"):
        keep = T.nms(
            torch.from_numpy(case["boxes"]), torch.from_numpy(case["scores"]), case["iou_threshold"]
        )
        assert keep.tolist() == case["keep"].tolist(), case["id"]
    for case in _fixture_cases("batched_nms"):
        keep = T.batched_nms(
            torch.from_numpy(case["boxes"]),
            torch.from_numpy(case["scores"]),
            torch.from_numpy(case["idxs"]),
            case["iou_threshold"],
        )
        assert keep.tolist() == case["keep"].tolist(), case["id"]
    for case in _fixture_cases("box_iou"):
        iou = T.box_iou(torch.from_numpy(case["boxes1"]), torch.from_numpy(case["boxes2"]))
        tol = 1e-5 if iou.dtype == torch.float32 else 1e-9
        torch.testing.assert_close(
            iou, torch.from_numpy(case["iou"]), rtol=tol, atol=tol, equal_nan=True
        )


@pytest.mark.torchvision
def test_against_torchvision_directly():
    tv = pytest.importorskip("torchvision")
    x = _x(torch.float64).requires_grad_(True)
    x_tv = x.detach().clone().requires_grad_(True)
    rois = _rois(torch.float64, k=6, scale=0.25)
    for aligned in (False, True):
        y = T.roi_align(x, rois, OUT, 0.25, -1, aligned)
        y_tv = tv.ops.roi_align(x_tv, rois, OUT, 0.25, -1, aligned)
        torch.testing.assert_close(y, y_tv, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(
        T.roi_pool(x, rois, OUT, 0.25), tv.ops.roi_pool(x_tv, rois, OUT, 0.25)
    )
    y, y_tv = T.roi_pool(x, rois, OUT, 0.25), tv.ops.roi_pool(x_tv, rois, OUT, 0.25)
    grad = torch.randn_like(y)
    torch.testing.assert_close(
        torch.autograd.grad(y, x, grad)[0], torch.autograd.grad(y_tv, x_tv, grad)[0]
    )
    boxes, scores = _boxes(40), _scores(40)
    assert T.nms(boxes, scores, 0.4).tolist() == tv.ops.nms(boxes, scores, 0.4).tolist()
    torch.testing.assert_close(T.box_iou(boxes, boxes[:7]), tv.ops.box_iou(boxes, boxes[:7]))
    idxs = torch.arange(40) % 4
    assert (
        T.batched_nms(boxes, scores, idxs, 0.4).tolist()
        == tv.ops.batched_nms(boxes, scores, idxs, 0.4).tolist()
    )
    feats = _pyramid()
    boxes_list = [
        torch.tensor([[1.3, 2.2, 9.3, 10.2], [10.1, 3.3, 42.1, 35.3]], dtype=torch.float64)
    ]
    ours = MultiScaleRoIAlign(["p2", "p3", "p4"], 3, 2, canonical_scale=16)
    theirs = tv.ops.MultiScaleRoIAlign(["p2", "p3", "p4"], 3, 2, canonical_scale=16)
    torch.testing.assert_close(
        ours(feats, boxes_list, [(64, 64)]), theirs(feats, boxes_list, [(64, 64)])
    )


# --- CUDA (skipped without a GPU) ----------------------------------------------------------------


@pytest.fixture
def layout_scope(layout):
    """The test's body runs its CUDA kernels in ``layout``."""
    with T.cuda_layout(layout):
        yield layout


@CUDA
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("name", ROI_FUNCS)
@pytest.mark.usefixtures("layout_scope")
def test_cuda_matches_cpu(name, dtype):
    x = _x(dtype)
    rois = _rois(torch.float32 if dtype == torch.float16 else dtype, k=6, scale=0.5)
    y_cpu = _call(name, x.requires_grad_(True), rois)
    x_cuda = x.detach().cuda().requires_grad_(True)
    y_cuda = _call(name, x_cuda, rois.cuda())
    tol = {torch.float16: 4e-3}.get(dtype, TOL.get(dtype))  # fp16: 1-2 ulps after the cast
    torch.testing.assert_close(y_cuda.cpu(), y_cpu, rtol=tol, atol=tol)
    grad = torch.randn_like(y_cpu)
    (g_cpu,) = torch.autograd.grad(y_cpu, x, grad)
    (g_cuda,) = torch.autograd.grad(y_cuda, x_cuda, grad.cuda())
    torch.testing.assert_close(g_cuda.cpu(), g_cpu, rtol=tol, atol=tol)


@CUDA
@pytest.mark.torchvision
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.usefixtures("layout_scope")
def test_cuda_against_torchvision_cuda(dtype):
    """Our CUDA kernels (both layouts) against torchvision's CUDA kernels: outputs and input
    gradients, float64 1e-9 and float32 1e-5; NMS and box IoU on the device."""
    tv = pytest.importorskip("torchvision")
    tol = TOL[dtype]
    x = _x(dtype, device="cuda").requires_grad_(True)
    x_tv = x.detach().clone().requires_grad_(True)
    rois = _rois(dtype, k=6, scale=0.25, device="cuda")
    for aligned, sr in ((False, -1), (True, -1), (True, 2)):
        y = T.roi_align(x, rois, OUT, 0.25, sr, aligned)
        y_tv = tv.ops.roi_align(x_tv, rois, OUT, 0.25, sr, aligned)
        torch.testing.assert_close(y, y_tv, rtol=tol, atol=tol)
        grad = torch.randn_like(y)
        torch.testing.assert_close(
            torch.autograd.grad(y, x, grad)[0],
            torch.autograd.grad(y_tv, x_tv, grad)[0],
            rtol=tol,
            atol=tol,
        )
    y, y_tv = T.roi_pool(x, rois, OUT, 0.25), tv.ops.roi_pool(x_tv, rois, OUT, 0.25)
    torch.testing.assert_close(y, y_tv, rtol=tol, atol=tol)
    grad = torch.randn_like(y)
    torch.testing.assert_close(
        torch.autograd.grad(y, x, grad)[0],
        torch.autograd.grad(y_tv, x_tv, grad)[0],
        rtol=tol,
        atol=tol,
    )
    boxes, scores = _boxes(200, dtype, device="cuda"), _scores(200, dtype, device="cuda")
    assert T.nms(boxes, scores, 0.4).tolist() == tv.ops.nms(boxes, scores, 0.4).tolist()
    torch.testing.assert_close(
        T.box_iou(boxes, boxes[:7]), tv.ops.box_iou(boxes, boxes[:7]), rtol=tol, atol=tol
    )


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_nms_box_iou_match_cpu(dtype):
    boxes, scores = _boxes(200, dtype), _scores(200, dtype)
    for thr in (0.3, 0.5, 0.7):
        assert (
            T.nms(boxes.cuda(), scores.cuda(), thr).cpu().tolist()
            == T.nms(boxes, scores, thr).tolist()
        )
    idxs = torch.arange(200) % 5
    assert (
        T.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5).cpu().tolist()
        == T.batched_nms(boxes, scores, idxs, 0.5).tolist()
    )
    torch.testing.assert_close(
        T.box_iou(boxes.cuda(), boxes[:9].cuda()).cpu(), T.box_iou(boxes, boxes[:9])
    )
    assert T.nms(boxes[:0].cuda(), scores[:0].cuda(), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="finite"):
        T.nms(torch.full((3, 4), float("nan"), device="cuda"), scores[:3].cuda(), 0.5)


@CUDA
def test_cuda_opcheck_and_gradcheck():
    x = _x(device="cuda").requires_grad_(True)
    rois = _rois(scale=0.5, device="cuda")
    for name in ROI_FUNCS:
        op, args = _op_args(name, x, rois)
        torch.library.opcheck(op, args)
        # float64 atomic adds are not bitwise deterministic in their order
        assert torch.autograd.gradcheck(lambda t, n=name: _call(n, t, rois), (x,), nondet_tol=1e-12)
    torch.library.opcheck(ops.nms.default, (_boxes(device="cuda"), _scores(device="cuda"), 0.5))
    torch.library.opcheck(ops.box_iou.default, (_boxes(device="cuda"), _boxes(4, device="cuda")))
    with pytest.raises(ValueError, match="boxes must be on the same device as input"):
        T.roi_align(x, rois.cpu(), OUT)
    bad = rois.clone()
    bad[0, 0] = 7
    with pytest.raises(ValueError, match=r"rois\[:, 0\]"):
        T.roi_align(x, bad, OUT)


@CUDA
def test_cuda_compile_and_multiscale():
    x = _x(torch.float32, device="cuda").requires_grad_(True)
    args = (
        _rois(torch.float32, scale=0.5, device="cuda"),
        _boxes(10, torch.float32, device="cuda"),
        _scores(10, torch.float32, device="cuda"),
    )
    torch._dynamo.reset()
    y, kept = torch.compile(_detect, fullgraph=True)(x, *args)
    y_eager, kept_eager = _detect(x, *args)
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(kept, kept_eager)
    feats = {k: v.cuda() for k, v in _pyramid().items()}
    boxes = [torch.tensor([[1.3, 2.2, 9.3, 10.2], [10.1, 3.3, 42.1, 35.3]], device="cuda")]
    pooler = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 3, 2, canonical_scale=32)
    cpu = pooler({k: v.cpu() for k, v in feats.items()}, [b.cpu() for b in boxes], [(64, 64)])
    torch.testing.assert_close(pooler(feats, boxes, [(64, 64)]).cpu(), cpu)
