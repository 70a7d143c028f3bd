"""Issue 12: refimpl.ops.torch as a drop-in for torchvision.ops where deployment needs it:
every public function and module compiles with ``torch.jit.script`` and traces with
``torch.fx.symbolic_trace`` (the RoI functions are fx leaves, as torchvision's), giving what
eager mode gives; an empty batch and empty NMS input give empty results; the operators are
callable with torchvision's arguments."""

from __future__ import annotations

import pytest
import torch

import refimpl.ops.torch as ops

torch.manual_seed(0)
X = torch.rand(2, 3, 10, 12)
ROIS = torch.tensor([[0, 1.0, 1.5, 6.0, 7.0], [1, 0.0, 0.0, 9.5, 8.0], [1, 3.0, 2.0, 3.5, 2.2]])
BOX_LIST = [ROIS[:1, 1:], ROIS[1:, 1:]]
BOXES = torch.tensor([[0, 0, 4, 4.0], [1, 1, 5, 5], [6, 6, 9, 9], [0, 0, 4.2, 4]])
SCORES = torch.tensor([0.9, 0.8, 0.7, 0.95])
IDXS = torch.tensor([0, 0, 1, 1])

FUNCTIONS = {
    "roi_align": (ops.roi_align, (X, ROIS, [3, 2], 0.5, 2, True)),
    "roi_align list": (ops.roi_align, (X, BOX_LIST, [3, 3], 1.0, -1, False)),
    "roi_pool": (ops.roi_pool, (X, ROIS, [3, 2], 0.5)),
    "roi_warp": (ops.roi_warp, (X, ROIS, [2, 2], 1.0, 2)),
    "prroi_pool": (ops.prroi_pool, (X, BOX_LIST, [2, 3], 1.0, True)),
    "nms": (ops.nms, (BOXES, SCORES, 0.5)),
    "batched_nms": (ops.batched_nms, (BOXES, SCORES, IDXS, 0.5)),
    "box_iou": (ops.box_iou, (BOXES, BOXES[:2])),
    "convert_boxes_to_roi_format": (ops.convert_boxes_to_roi_format, (BOX_LIST,)),
}

MODULES = {
    "RoIAlign": (ops.RoIAlign((3, 2), 0.5, 2, aligned=True), (X, ROIS)),
    "RoIAlign max": (ops.RoIAlign(3, 1.0, 2, pool_mode="max"), (X, BOX_LIST)),
    "RoIPool": (ops.RoIPool((3, 2), 0.5), (X, ROIS)),
    "RoIWarp": (ops.RoIWarp(2, 1.0, 2), (X, ROIS)),
    "PrRoIPool": (ops.PrRoIPool(2, 1.0), (X, BOX_LIST)),
}


def _pyramid():
    """Two FPN levels of an 32x48 image batch (strides 4 and 8) and boxes of both sizes."""
    feats = {
        "p2": torch.rand(2, 3, 8, 12),
        "p3": torch.rand(2, 3, 4, 6),
        "pool": torch.rand(2, 3, 2, 3),
    }
    boxes = [
        torch.tensor([[0.0, 0.0, 30.0, 30.0], [2.0, 3.0, 9.0, 8.0]]),
        torch.tensor([[1.0, 1.0, 40.0, 31.0]]),
    ]
    return feats, boxes, [(32, 48), (30, 40)]


POOLERS = {
    "MultiScaleRoIAlign": ops.MultiScaleRoIAlign(["p2", "p3"], 3, 2, canonical_scale=16),
    "MultiScaleRoIPool": ops.MultiScaleRoIPool(["p2", "p3"], (2, 3), canonical_scale=16),
    "MultiScaleRoIWarp": ops.MultiScaleRoIWarp(["p2", "p3"], 2, 2, canonical_scale=16),
}


def _same(a, b):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same kernels: bitwise
    else:
        assert a == b


@pytest.mark.parametrize("name", FUNCTIONS)
def test_functions_script(name):
    fn, args = FUNCTIONS[name]
    _same(torch.jit.script(fn)(*args), fn(*args))


@pytest.mark.parametrize("name", MODULES)
def test_modules_script_and_trace(name):
    module, args = MODULES[name]
    want = module(*args)
    _same(torch.jit.script(module)(*args), want)
    traced = torch.fx.symbolic_trace(module)
    _same(traced(*args), want)
    # the RoI function is one leaf node of the graph, as torchvision's
    calls = [n.target.__name__ for n in traced.graph.nodes if n.op == "call_function"]
    assert len(calls) == 1 and calls[0] in ("roi_align", "roi_pool", "roi_warp", "prroi_pool")


@pytest.mark.parametrize("name", POOLERS)
def test_poolers_script_and_trace(name):
    pooler = POOLERS[name]
    feats, boxes, shapes = _pyramid()
    want = pooler(feats, boxes, shapes)
    assert want.shape[0] == 3
    _same(torch.jit.script(pooler)(feats, boxes, shapes), want)
    traced = torch.fx.symbolic_trace(pooler)
    _same(traced(feats, boxes, shapes), want)
    # tracing left no Proxy behind in the module (it still scripts afterwards)
    assert all(isinstance(s, float) for s in pooler.scales)
    torch.jit.script(pooler)


class _CallsEveryFunction(torch.nn.Module):
    """User code that calls the public functions by attribute, from a module that did not
    ``torch.fx.wrap`` them."""

    def forward(self, x, rois, box_list, boxes, scores, idxs):
        return (
            ops.roi_align(x, rois, [3, 2], 0.5, 2, True),
            ops.roi_align(x, box_list, 2),
            ops.roi_pool(x, rois, [3, 2], 0.5),
            ops.roi_warp(x, rois, 2, 1.0, 2),
            ops.prroi_pool(x, box_list, 2, 1.0, True),
            ops.nms(boxes, scores, 0.5),
            ops.batched_nms(boxes, scores, idxs, 0.5),
            ops.box_iou(boxes, boxes[:2]),
            ops.convert_boxes_to_roi_format(box_list),
        )


def test_functions_are_fx_leaves_from_any_module():
    """Each public function is one node of the traced graph wherever it is called from
    (torchvision's trace into their bodies, or fail), and the graph gives eager's output."""
    module = _CallsEveryFunction()
    args = (X, ROIS, BOX_LIST, BOXES, SCORES, IDXS)
    traced = torch.fx.symbolic_trace(module)
    calls = [n.target.__name__ for n in traced.graph.nodes if n.op == "call_function"]
    ours = [c for c in calls if c != "getitem"]  # (boxes[:2] is a node too)
    assert ours == ["roi_align", "roi_align", "roi_pool", "roi_warp", "prroi_pool", "nms",
                    "batched_nms", "box_iou", "convert_boxes_to_roi_format"], calls  # fmt: skip
    for got, want in zip(traced(*args), module(*args), strict=True):
        _same(got, want)


def test_graph_node_names_of_multiscale_roi_align():
    """torchvision's feature-extraction helper walks the pooler as it does its own."""
    fe = pytest.importorskip("torchvision.models.feature_extraction")
    pooler = POOLERS["MultiScaleRoIAlign"]
    train_nodes, eval_nodes = fe.get_graph_node_names(pooler)
    assert train_nodes == eval_nodes and train_nodes[0] == "x" and len(train_nodes) >= 3


@pytest.mark.parametrize("fn", [ops.roi_align, ops.roi_pool, ops.roi_warp, ops.prroi_pool])
@pytest.mark.parametrize("scripted", [False, True])
def test_empty_batch(fn, scripted):
    """torchvision: ``roi_align(zeros(0, 3, 10, 10), zeros(0, 5), (7, 7), ...)`` is
    ``[0, 3, 7, 7]`` (refimpl used to raise "x must hold at least one image")."""
    f = torch.jit.script(fn) if scripted else fn
    x = torch.zeros(0, 3, 10, 10, requires_grad=True)
    y = f(x, torch.zeros(0, 5), [7, 7], 1.0)
    assert y.shape == (0, 3, 7, 7)
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_empty_nms_inputs():
    """torchvision: no boxes -> an empty int64 index tensor, whatever the other arguments
    (``batched_nms`` with ``None`` scores and idxs used to raise TypeError)."""
    empty = ops.batched_nms(torch.zeros(0, 4, dtype=torch.int64), None, None, 0.5)
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    for f in (ops.batched_nms, torch.jit.script(ops.batched_nms)):
        keep = f(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
        assert keep.dtype == torch.int64 and keep.shape == (0,)
    assert ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    assert ops.box_iou(torch.zeros(0, 4), BOXES).shape == (0, 4)


def test_operators_take_torchvisions_arguments():
    """``torch.ops.torchvision.<op>``'s positional arguments call ``torch.ops.refimpl.<op>``
    unchanged (our extra parameters come last, with defaults in the schema)."""
    want = ops.roi_align(X, ROIS, (3, 2), 0.5, 2, True)
    _same(torch.ops.refimpl.roi_align(X, ROIS, 0.5, 3, 2, 2, True), want)
    _same(
        torch.ops.refimpl.roi_align(
            X, ROIS, spatial_scale=0.5, pooled_height=3, pooled_width=2, sampling_ratio=2,
            aligned=True,
        ),
        want,
    )  # fmt: skip
    out, argmax = torch.ops.refimpl.roi_pool(X, ROIS, 0.5, 3, 2)
    _same(out, ops.roi_pool(X, ROIS, (3, 2), 0.5))
    assert argmax.dtype == torch.int64 and argmax.shape == out.shape
    _same(torch.ops.refimpl.nms(BOXES, SCORES, 0.5), ops.nms(BOXES, SCORES, 0.5))
    _same(torch.ops.refimpl.roi_warp(X, ROIS, 1.0, 2, 2), ops.roi_warp(X, ROIS, 2, 1.0))
    _same(torch.ops.refimpl.prroi_pool(X, ROIS, 1.0, 2, 2), ops.prroi_pool(X, ROIS, 2, 1.0))


def test_schemas_match_torchvisions():
    """Where torchvision imports: the argument names and order of its operators' schemas."""
    pytest.importorskip("torchvision")
    for name, extra in (("roi_align", ["pool_mode"]), ("roi_pool", []), ("nms", [])):
        theirs = [a.name for a in getattr(torch.ops.torchvision, name).default._schema.arguments]
        ours = [a.name for a in getattr(torch.ops.refimpl, name).default._schema.arguments]
        assert ours == theirs + extra, name
