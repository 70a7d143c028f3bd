"""Errors that are what our users expect and what torchvision's users already catch.

refimpl names the bad argument in a ``ValueError`` or ``TypeError``; torchvision raises, for
the same mistakes, a ``RuntimeError`` (its C++ kernels' ``TORCH_CHECK``, and its operators'
schema type checks), an ``AssertionError`` (``check_roi_boxes_shape``'s ``torch._assert``)
or an ``IndexError`` (a ``size(1)`` or column index that does not exist). Each class below is
both, so that ``except ValueError`` and the ``except RuntimeError`` of code written for
torchvision both catch it. Which torchvision raises for which check was measured with
torchvision 0.29.1 (tests/ops/test_torch_errors.py keeps the list and checks it where
torchvision imports).
"""

from __future__ import annotations

__all__ = [
    "TypeAssertionError",
    "TypeRuntimeError",
    "ValueAssertionError",
    "ValueIndexError",
    "ValueRuntimeError",
]


class ValueRuntimeError(ValueError, RuntimeError):
    """A bad shape where torchvision's kernel raises RuntimeError (nms' boxes and scores,
    a RoI operator's input rank, batched_nms' idxs length)."""


class TypeRuntimeError(TypeError, RuntimeError):
    """A bad dtype or argument type where torchvision raises RuntimeError (integer
    features or boxes; a float ``sampling_ratio``, a string ``aligned``)."""


class ValueAssertionError(ValueError, AssertionError):
    """A RoI operator's ``boxes`` of the wrong shape, where torchvision's
    ``check_roi_boxes_shape`` fails its assertion (``Tensor[K, 5]`` or ``List[Tensor[L, 4]]``)."""


class TypeAssertionError(TypeError, AssertionError):
    """``boxes`` that is neither a tensor nor a list of tensors (torchvision asserts)."""


class ValueIndexError(ValueError, IndexError):
    """Boxes whose rank or column count makes torchvision index out of range (a 1-D
    ``boxes`` of a RoI operator; ``box_iou`` boxes with fewer than 4 columns)."""
