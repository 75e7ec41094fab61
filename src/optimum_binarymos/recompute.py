"""A linear product whose quantized weight is made again in backward instead of being kept.

Plain autograd on ``F.linear(x, quantize(W))`` keeps the dense quantized weight alive from forward to backward
(``F.linear`` needs it for the input gradient), so training a quantized model holds one extra dense copy of
every weight, the size of the float model itself. Quantizing is elementwise and cheap next to the matmul, so
:func:`linear_recomputing_weight` keeps only what the weight is made from (the latent parameter itself, or
packed bits) and makes the weight again when the gradient is needed. That costs one more elementwise pass per
layer in backward; where memory is plentiful, :func:`keep_quantized_weights` trades it back for speed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

_mode = threading.local()


@contextlib.contextmanager
def keep_quantized_weights() -> Iterator[None]:
    """Within this block (in this thread), :func:`linear_recomputing_weight` is plain ``F.linear`` on the made
    weight: autograd keeps each dense quantized weight until backward, as large as the float model, and backward
    skips making it again. For when memory is plentiful and every step counts::

        with keep_quantized_weights():
            trainer.train()
    """
    previous = getattr(_mode, "keep", False)
    _mode.keep = True
    try:
        yield
    finally:
        _mode.keep = previous


class _LinearRecomputingWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, make_weight: Callable[..., torch.Tensor], *weight_inputs: torch.Tensor):
        weight = make_weight(*weight_inputs)
        y = F.linear(x, weight.to(x.dtype))
        ctx.make_weight = make_weight
        ctx.x_dtype = x.dtype
        # The activations are only needed for the weight's gradient.
        weight_needs_grad = any(ctx.needs_input_grad[2:])
        ctx.save_for_backward(x if weight_needs_grad else None, *weight_inputs)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        x, *weight_inputs = ctx.saved_tensors
        needs_x, _, *needs_inputs = ctx.needs_input_grad
        with torch.enable_grad():
            leaves = [
                tensor.detach().requires_grad_(need)
                for tensor, need in zip(weight_inputs, needs_inputs, strict=True)
            ]
            weight = ctx.make_weight(*leaves)
        grad_x = None
        if needs_x:
            grad_x = (grad_y @ weight.detach().to(grad_y.dtype)).to(ctx.x_dtype)
        grad_inputs = [None] * len(leaves)
        if any(needs_inputs):
            grad_weight = grad_y.reshape(-1, grad_y.shape[-1]).T @ x.reshape(-1, x.shape[-1]).to(grad_y.dtype)
            wanted = [leaf for leaf, need in zip(leaves, needs_inputs, strict=True) if need]
            computed = iter(torch.autograd.grad(weight, wanted, grad_weight.to(weight.dtype)))
            grad_inputs = [next(computed) if need else None for need in needs_inputs]
        return grad_x, None, *grad_inputs


def linear_recomputing_weight(
    x: torch.Tensor, make_weight: Callable[..., torch.Tensor], *weight_inputs: torch.Tensor
) -> torch.Tensor:
    """``F.linear(x, make_weight(*weight_inputs))`` with the same gradients, without keeping the weight.

    Args:
        x: ``(..., in_features)`` activations.
        make_weight: builds the ``(out_features, in_features)`` weight from ``weight_inputs``; it must be
            deterministic, since backward calls it again (with autograd on, to reach ``weight_inputs``).
        weight_inputs: the tensors the weight is made from (latent weights, scales, packed bits ...); the
            gradient reaches those that require it.

    Returns:
        ``(..., out_features)`` in ``x``'s dtype (or the autocast dtype). Backward holds ``weight_inputs``
        and, only when one of them needs a gradient, ``x``; the weight itself lives during each pass only.
    """
    # Nothing to keep when no gradient will be taken (inference, evaluation): skip the autograd Function.
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, *weight_inputs))
    if not needs_grad or getattr(_mode, "keep", False):
        return F.linear(x, make_weight(*weight_inputs).to(x.dtype))
    return _LinearRecomputingWeight.apply(x, make_weight, *weight_inputs)
