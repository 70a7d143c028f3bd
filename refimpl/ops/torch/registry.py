"""The other RoI operators, registered from one table: ``refimpl::roi_warp``,
``refimpl::roi_pool``, ``refimpl::prroi_pool`` and their ``*_backward`` operators.

Each row of :data:`TABLE` says what differs between the operators: the name, the parameters
after the pooled size (each spelled once: name, schema type, default, bound), the backend
functions, and the kind of gradient (a :class:`Gradient` subclass: to the input, keeping it
only for the max mode; through a saved argmax; to the input and the boxes). :func:`register`
turns a row into what :mod:`refimpl.ops.torch.roi_align_op` writes out by hand for RoIAlign:
the operator with its schema, CPU, CUDA and fake kernels; the backward operator with its
own; and the autograd formula tying them together.

Every forward takes torchvision's leading arguments ``(input, rois, spatial_scale,
pooled_height, pooled_width)``, and the parameters after them have the public functions'
defaults in the schema. The dispatcher drops trailing arguments equal to their defaults
before it calls a kernel, so the kernels fill them back in (:meth:`RoIOp.params_of`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import cpu_kernels, cuda_kernels
from .checks import check_roi_tensors, check_sampling_ratio
from .cpu_kernels import cpu_backend

__all__ = ["CUDA_KERNELS", "TABLE", "Param", "RoIOp", "register"]

_LEADING = "float spatial_scale, SymInt pooled_height, SymInt pooled_width"
_SHAPE = "SymInt batch_size, SymInt channels, SymInt height, SymInt width"


@dataclass(frozen=True)
class Param:
    """A parameter after the pooled size: its ``name`` and schema ``type`` (the backend
    interface's order), the public function's ``default``, and a ``check`` run before any
    kernel (refimpl.ops.validate's bounds)."""

    name: str
    type: str
    default: bool | int | str
    check: Callable[[Any], Any] | None = None

    def schema(self, with_default: bool = True) -> str:
        if not with_default:
            return f"{self.type} {self.name}"
        default = f'"{self.default}"' if isinstance(self.default, str) else self.default
        return f"{self.type} {self.name}={default}"


@dataclass(frozen=True)
class RoIOp:
    """One row of the table."""

    name: str
    params: tuple[Param, ...]
    cpu_forward: Callable[[Any], Callable]  # the CPU backend -> its forward function
    cpu_backward: Callable[[Any], Callable]  # the CPU backend -> its backward function
    gradient: type[Gradient]

    def params_of(self, given: tuple) -> tuple:
        """The parameters after the pooled size, trailing defaults filled in, checked."""
        params = tuple(given) + tuple(p.default for p in self.params[len(given) :])
        for p, v in zip(self.params, params, strict=True):
            if p.check is not None:
                p.check(v)
        return params

    def param(self, name: str, params: tuple) -> Any:
        return params[[p.name for p in self.params].index(name)]

    def forward_schema(self, returns: str) -> str:
        params = "".join(f", {p.schema()}" for p in self.params)
        return f"(Tensor input, Tensor rois, {_LEADING}{params}) -> {returns}"

    def backward_params_schema(self) -> str:
        # The backward operators are called by the autograd formula with every argument.
        return "".join(f", {p.schema(with_default=False)}" for p in self.params)


class Gradient:
    """How an operator's backward is formed, and the forward kernels that go with it (the
    default: one output, from the backend's forward)."""

    returns = "Tensor"

    def __init__(self, op: RoIOp):
        self.op = op

    def forward_cpu(self, input, rois, scale, ph, pw, params):
        fn = self.op.cpu_forward(cpu_backend())
        return cpu_kernels.roi_forward(fn, input, rois, (ph, pw), scale, *params)

    def forward_cuda(self, input, rois, scale, ph, pw, params):
        name = f"{self.op.name}_forward"
        return cuda_kernels.roi_forward(name, input, rois, (ph, pw), scale, *params)

    def forward_fake(self, input: Tensor, rois: Tensor, ph, pw):
        check_roi_tensors(input, rois)
        return input.new_empty((rois.shape[0], input.shape[1], ph, pw))

    def backward_schema(self) -> str:
        raise NotImplementedError

    def backward_cpu(self, *args):
        raise NotImplementedError

    def backward_cuda(self, *args):
        raise NotImplementedError

    def backward_fake(self, *args):
        raise NotImplementedError

    def setup_context(self, ctx, inputs: tuple, output) -> None:
        raise NotImplementedError

    def backward(self, ctx, *grads):
        raise NotImplementedError


class InputGradient(Gradient):
    """RoIWarp's (and RoIAlign's) gradient: to the input only, scattered through the
    forward's samples. The input is kept only for ``pool_mode="max"``, which finds its
    winning samples again; the average needs only the input's shape."""

    def backward_schema(self) -> str:
        return (
            f"(Tensor grad, Tensor? input, Tensor rois, {_LEADING}, {_SHAPE}"
            f"{self.op.backward_params_schema()}) -> Tensor"
        )

    def backward_cpu(self, grad, input, rois, scale, ph, pw, n, c, h, w, *params):
        fn = self.op.cpu_backward(cpu_backend())
        params = self.op.params_of(params)
        return cpu_kernels.roi_backward(
            fn, grad, input, rois, (n, c, h, w), (ph, pw), scale, *params
        )

    def backward_cuda(self, grad, input, rois, scale, ph, pw, n, c, h, w, *params):
        name = f"{self.op.name}_backward"
        params = self.op.params_of(params)
        return cuda_kernels.roi_backward(
            name, grad, input, rois, (n, c, h, w), (ph, pw), scale, *params
        )

    def backward_fake(self, grad, _input, _rois, _scale, _ph, _pw, n, c, h, w, *_params):
        return grad.new_empty((n, c, h, w))

    def setup_context(self, ctx, inputs: tuple, _output) -> None:
        input, rois, scale, ph, pw, *given = inputs
        params = self.op.params_of(tuple(given))
        ctx.backward_args = (scale, ph, pw, *input.shape, *params)
        keep_input = self.op.param("pool_mode", params) == "max"
        ctx.save_for_backward(input if keep_input else None, rois)

    def backward(self, ctx, grad):
        n_inputs = 5 + len(self.op.params)
        if not ctx.needs_input_grad[0]:
            return (None,) * n_inputs
        input, rois = ctx.saved_tensors
        backward_op = getattr(torch.ops.refimpl, f"{self.op.name}_backward").default
        grad_input = backward_op(grad, input, rois, *ctx.backward_args)
        return (grad_input,) + (None,) * (n_inputs - 1)  # nothing to the boxes or parameters


class ArgmaxGradient(Gradient):
    """RoIPool's (Fast R-CNN eq. 4): the forward also returns each bin's argmax (int64: the
    flat index ``row * W + col`` of its first maximum in the image plane, -1 for an empty
    bin) and the backward is a scatter through it, so autograd keeps the argmax, not the
    input. torchvision's ``roi_pool`` / ``_roi_pool_backward`` signatures."""

    returns = "(Tensor, Tensor)"

    def forward_cpu(self, input, rois, scale, ph, pw, _params):
        return cpu_kernels.roi_pool_forward(input, rois, (ph, pw), scale)

    def forward_cuda(self, input, rois, scale, ph, pw, _params):
        name = "roi_pool_forward_with_argmax"
        return cuda_kernels.roi_forward(name, input, rois, (ph, pw), scale, with_argmax=True)

    def forward_fake(self, input: Tensor, rois: Tensor, ph, pw):
        y = super().forward_fake(input, rois, ph, pw)
        return y, y.new_empty(y.shape, dtype=torch.int64)

    def backward_schema(self) -> str:
        return f"(Tensor grad, Tensor rois, Tensor argmax, {_LEADING}, {_SHAPE}) -> Tensor"

    def backward_cpu(self, grad, rois, argmax, scale, ph, pw, n, c, h, w):
        return cpu_kernels.roi_pool_backward(grad, rois, argmax, (n, c, h, w), (ph, pw), scale)

    def backward_cuda(self, grad, rois, argmax, scale, ph, pw, n, c, h, w):
        return cuda_kernels.roi_pool_backward(grad, rois, argmax, (n, c, h, w), (ph, pw), scale)

    def backward_fake(self, grad, _rois, _argmax, _scale, _ph, _pw, n, c, h, w):
        return grad.new_empty((n, c, h, w))

    def setup_context(self, ctx, inputs: tuple, output) -> None:
        input, rois, scale, ph, pw = inputs
        ctx.backward_args = (scale, ph, pw, *input.shape)
        ctx.save_for_backward(rois, output[1])
        ctx.mark_non_differentiable(output[1])
        # Otherwise autograd hands the backward a zero-filled int64 "gradient" of the argmax:
        # an allocation and a fill as large as the output (a third of this op's backward).
        ctx.set_materialize_grads(False)

    def backward(self, ctx, grad, _grad_argmax):
        if grad is None or not ctx.needs_input_grad[0]:
            return (None,) * 5
        rois, argmax = ctx.saved_tensors
        grad_input = torch.ops.refimpl.roi_pool_backward.default(
            grad, rois, argmax, *ctx.backward_args
        )
        return (grad_input,) + (None,) * 4


class InputAndBoxGradient(Gradient):
    """PrRoIPool's (IoU-Net sec. 3.3): the output moves continuously with the box, so the
    backward returns ``(grad_input, grad_rois)``: the tent integrals scattered to the input,
    and Leibniz's rule along the bin edges for the boxes (``grad_rois[:, 0]`` is 0). The box
    gradient integrates the input: the input is always kept."""

    def backward_schema(self) -> str:
        params = self.op.backward_params_schema()
        return f"(Tensor grad, Tensor input, Tensor rois, {_LEADING}{params}) -> (Tensor, Tensor)"

    def backward_cpu(self, grad, input, rois, scale, ph, pw, *params):
        params = self.op.params_of(params)
        return cpu_kernels.prroi_pool_backward(grad, input, rois, (ph, pw), scale, *params)

    def backward_cuda(self, grad, input, rois, scale, ph, pw, *params):
        params = self.op.params_of(params)
        return cuda_kernels.prroi_pool_backward(grad, input, rois, (ph, pw), scale, *params)

    def backward_fake(self, grad, input, rois, *_args):
        check_roi_tensors(input, rois)
        return grad.new_empty(input.shape), rois.new_empty(rois.shape)

    def setup_context(self, ctx, inputs: tuple, _output) -> None:
        input, rois, scale, ph, pw, *given = inputs
        ctx.backward_args = (scale, ph, pw, *self.op.params_of(tuple(given)))
        ctx.save_for_backward(input, rois)

    def backward(self, ctx, grad):
        n_inputs = 5 + len(self.op.params)
        needs_input, needs_rois = ctx.needs_input_grad[:2]
        if not (needs_input or needs_rois):
            return (None,) * n_inputs
        input, rois = ctx.saved_tensors
        grad_input, grad_rois = torch.ops.refimpl.prroi_pool_backward.default(
            grad, input, rois, *ctx.backward_args
        )
        return (
            grad_input if needs_input else None,
            grad_rois if needs_rois else None,
            *(None,) * (n_inputs - 2),
        )


TABLE = (
    # RoIWarp as the Mask R-CNN ablation uses it (Table 2c; MNC): the box quantized once, as
    # in RoIPool, then sampled bilinearly, as in RoIAlign.
    RoIOp(
        "roi_warp",
        (
            Param("sampling_ratio", "SymInt", -1, check_sampling_ratio),
            Param("pool_mode", "str", "max"),
        ),
        lambda backend: backend.roi_warp_forward,
        lambda backend: backend.roi_warp_backward,
        InputGradient,
    ),
    # RoIPool (Fast R-CNN sec. 2.1).
    RoIOp(
        "roi_pool",
        (),
        lambda backend: backend.roi_pool_forward_with_argmax,
        lambda backend: backend.roi_pool_backward_from_argmax,
        ArgmaxGradient,
    ),
    # Precise RoI Pooling (IoU-Net sec. 3.3): the exact mean of the bilinear map over a bin.
    RoIOp(
        "prroi_pool",
        (Param("aligned", "bool", False),),
        lambda backend: backend.prroi_pool_forward,
        lambda backend: backend.prroi_pool_backward,
        InputAndBoxGradient,
    ),
)

# name -> (forward CUDA kernel, backward CUDA kernel), as registered: the simulator tests call
# them on CPU tensors (tests/cuda/test_torch_ops_cudasim.py).
CUDA_KERNELS: dict[str, tuple[Callable, Callable]] = {}


def register(op: RoIOp) -> None:
    """``refimpl::<name>`` and ``refimpl::<name>_backward``, with their kernels, fake kernels
    and autograd formula, from one row of the table."""
    kind = op.gradient(op)

    def forward_cpu(input, rois, scale, ph, pw, *params):
        return kind.forward_cpu(input, rois, scale, ph, pw, op.params_of(params))

    def forward_cuda(input, rois, scale, ph, pw, *params):
        return kind.forward_cuda(input, rois, scale, ph, pw, op.params_of(params))

    def forward_fake(input, rois, _scale, ph, pw, *_params):
        return kind.forward_fake(input, rois, ph, pw)

    forward = torch.library.custom_op(
        f"refimpl::{op.name}",
        forward_cpu,
        mutates_args=(),
        device_types="cpu",
        schema=op.forward_schema(kind.returns),
    )
    forward.register_kernel("cuda", forward_cuda)
    forward.register_fake(forward_fake)

    backward = torch.library.custom_op(
        f"refimpl::{op.name}_backward",
        kind.backward_cpu,
        mutates_args=(),
        device_types="cpu",
        schema=kind.backward_schema(),
    )
    backward.register_kernel("cuda", kind.backward_cuda)
    backward.register_fake(kind.backward_fake)

    # setup_context is called by keyword: ctx=, inputs=, output=.
    forward.register_autograd(
        kind.backward,
        setup_context=lambda ctx, inputs, output: kind.setup_context(ctx, inputs, output),
    )
    CUDA_KERNELS[op.name] = (forward_cuda, kind.backward_cuda)


for _op in TABLE:
    register(_op)
