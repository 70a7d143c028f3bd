"""The typed backend interface: every backend module has exactly the protocol's functions,
with the protocol's signatures (names, kinds and defaults of the parameters), and the name
-> module mapping imports the module of that name."""

from __future__ import annotations

import inspect

import pytest

from refimpl.ops import BACKEND_FUNCTIONS, BACKEND_MODULES, BACKENDS, get_backend
from refimpl.ops.interface import Backend


def _parameters(fn, drop_self: bool = False):
    params = list(inspect.signature(fn).parameters.values())
    if drop_self:
        assert params[0].name == "self"
        params = params[1:]
    return [(p.name, p.kind, p.default) for p in params]


def test_protocol_lists_the_twelve_functions():
    assert BACKEND_FUNCTIONS == (
        "roi_align_forward",
        "roi_align_backward",
        "roi_pool_forward",
        "roi_pool_backward",
        "roi_pool_forward_with_argmax",
        "roi_pool_backward_from_argmax",
        "roi_warp_forward",
        "roi_warp_backward",
        "prroi_pool_forward",
        "prroi_pool_backward",
        "box_iou",
        "nms",
    )
    for name in BACKEND_FUNCTIONS:
        assert getattr(Backend, name).__doc__, name  # each says what it computes


@pytest.mark.parametrize("backend", list(BACKEND_MODULES))
def test_every_backend_satisfies_the_protocol(backend):
    module = BACKENDS[backend]
    assert module.__name__ == f"refimpl.ops.{backend}"  # backend names are module names
    assert get_backend(backend) is module
    for name in BACKEND_FUNCTIONS:
        fn = getattr(module, name)
        assert _parameters(fn) == _parameters(getattr(Backend, name), drop_self=True), (
            backend,
            name,
        )


def test_unknown_backend_is_a_key_error_naming_the_choices():
    with pytest.raises(KeyError, match="choose from"):
        BACKENDS["vectorized"]
    assert sorted(BACKENDS) == ["cuda", "numba", "numpy", "python"]


def test_the_lazy_torch_names_are_the_torch_layers():
    """refimpl.ops spells the torch layer's names once more, so that it can offer them
    without importing torch (``_TORCH_NAMES``): the same list as refimpl.ops.torch's
    ``__all__``, each name the same object."""
    import refimpl.ops
    import refimpl.ops.torch

    assert sorted(refimpl.ops._TORCH_NAMES) == sorted(refimpl.ops.torch.__all__)
    for name in refimpl.ops.torch.__all__:
        assert getattr(refimpl.ops, name) is getattr(refimpl.ops.torch, name), name
