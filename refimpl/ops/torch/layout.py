"""Which memory layout the CUDA RoI kernels run in: one vocabulary, set in a scope.

The RoIAlign / RoIWarp / RoIPool CUDA kernels exist in two layouts, compiled from the same
kernel bodies (refimpl.ops.cuda): ``"nchw"`` (one thread per output element, gathering from
one channel plane, as torchvision's kernels) and ``"channels_last"`` (threads laid along the
channels: a warp reads 32 consecutive channels of one pixel, coalesced). ``"auto"`` (the
default) runs the layout the tensors already have: channels-last for a channels-last input
(forward) or gradient (backward), NCHW otherwise, so that nothing is copied to change
layout. The operators' results are NCHW-contiguous either way.

    with refimpl.ops.cuda_layout("channels_last"):
        y = refimpl.ops.roi_align(x, boxes, 7, 1 / 16, 2)

The setting is a :class:`contextvars.ContextVar`: checked once when set, scoped to the
``with`` block (and to its thread or asyncio task), read when a CUDA kernel launches.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

Layout = Literal["nchw", "channels_last"]
LAYOUTS = ("auto", "nchw", "channels_last")

_CUDA_LAYOUT: contextvars.ContextVar[str] = contextvars.ContextVar(
    "refimpl_cuda_layout", default="auto"
)

__all__ = ["LAYOUTS", "Layout", "cuda_layout", "current_cuda_layout", "kernel_layout"]


def check_layout(layout: object) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout  # type: ignore[return-value]


def cuda_layout(layout: str) -> contextlib.AbstractContextManager[str]:
    """A ``with`` block whose CUDA RoI kernels run in ``layout`` (``"auto"``, ``"nchw"`` or
    ``"channels_last"``); a bad value is a ValueError here, not at the next launch."""
    return _scope(check_layout(layout))


@contextlib.contextmanager
def _scope(layout: str) -> Iterator[str]:
    token = _CUDA_LAYOUT.set(layout)
    try:
        yield layout
    finally:
        _CUDA_LAYOUT.reset(token)


def current_cuda_layout() -> str:
    """The setting in force here: ``"auto"`` unless inside :func:`cuda_layout`."""
    return _CUDA_LAYOUT.get()


def is_channels_last(t: Tensor | None) -> bool:
    return (
        t is not None
        and t.is_contiguous(memory_format=torch.channels_last)
        and not t.is_contiguous()
    )


def kernel_layout(t: Tensor | None) -> Layout:
    """The kernels' layout for a call whose feature-shaped tensor is ``t`` (the input in a
    forward, the gradient in a backward)."""
    setting = _CUDA_LAYOUT.get()
    if setting == "auto":
        return "channels_last" if is_channels_last(t) else "nchw"
    return setting  # type: ignore[return-value]
