"""Autograd through a function that lives in the sandbox: forward and vector-Jacobian
product are remote calls, the graph is the grader's.

``remote_differentiable(sub, ["roi_align"])(x, rois, 0.5, 2, 2, -1, True)`` returns a tensor
connected to ``x`` (and any other tensor argument requiring grad) through
:class:`RemoteFunction`, a ``torch.autograd.Function``: its forward sends the arguments
(detached) and returns the learner's result; its backward sends the same arguments, those
that need a gradient marked ``requires_grad``, with ``grad_outputs``; the sandbox recomputes
the learner's function and answers ``torch.autograd.grad(outputs, inputs, grad_outputs)``.
The sandbox keeps no state between the two, so a test can run ``torch.autograd.gradcheck``
here, in the trusted process: its finite differences are computed from remote forwards,
its analytical Jacobian from remote vector-Jacobian products, and both are compared here.
"""

from __future__ import annotations

from typing import Any

import torch

from .checks import fail


def _tensors(out: Any, what: str) -> tuple[torch.Tensor, ...]:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if not outs or not all(isinstance(o, torch.Tensor) for o in outs):
        kinds = ", ".join(type(o).__name__ for o in outs) or "nothing"
        fail(f"{what} returned {kinds}, not tensors")
    return tuple(outs)


class RemoteFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sub, path, args, *tensors):
        del tensors  # the tensors of ``args`` once more: passed so that autograd tracks them
        sent = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
        out = sub.call(path, tuple(sent), {})
        outs = _tensors(out, f"`{'.'.join(path)}`")
        ctx.sub, ctx.path, ctx.args = sub, path, sent
        ctx.single = not isinstance(out, (tuple, list))
        ctx.tensor_positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        for o in outs:
            if not o.is_floating_point():
                ctx.mark_non_differentiable(o)
        return outs[0] if ctx.single else outs

    @staticmethod
    def backward(ctx, *grad_outputs):
        wanted = ctx.needs_input_grad[3:]
        args = list(ctx.args)
        for position, need in zip(ctx.tensor_positions, wanted, strict=True):
            if need:
                args[position] = args[position].detach().clone().requires_grad_()
        grads = ctx.sub.vjp(ctx.path, args, [g.detach() for g in grad_outputs])
        name = f"`{'.'.join(ctx.path)}`"
        expected = [
            ctx.args[p] for p, need in zip(ctx.tensor_positions, wanted, strict=True) if need
        ]
        if not isinstance(grads, list) or len(grads) != len(expected):
            fail(f"the gradient of {name}: expected {len(expected)} tensors, got {grads!r}"[:300])
        out, it = [], iter(grads)
        for need, arg in zip(wanted, (ctx.args[p] for p in ctx.tensor_positions), strict=True):
            if not need:
                out.append(None)
                continue
            g = next(it)
            if g is not None and (not isinstance(g, torch.Tensor) or g.shape != arg.shape):
                fail(f"the gradient of {name} has the wrong shape: {getattr(g, 'shape', g)}")
            out.append(None if g is None else g.to(arg.dtype))
        return (None, None, None, *out)


def remote_differentiable(sub, path: list[str]):
    """The learner's ``path`` as a function of tensors that autograd differentiates here."""

    def apply(*args):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        return RemoteFunction.apply(sub, path, args, *tensors)

    return apply
