"""Sign binarization with a straight-through estimator."""

from __future__ import annotations

import torch

from ..packing import sign_with_ties


class _SignSTE(torch.autograd.Function):
    """Forward: ``sign(w)`` with ``sign(0) = +1``. Backward: the gradient passes where ``|w| < 1`` (hard clip)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return sign_with_ties(weight)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (weight,) = ctx.saved_tensors
        # The latent weight is never clamped; the clip only stops the gradient of weights already far past a sign flip.
        # 1{|w| < 1} as sign(max(1 - |w|, 0)): arithmetic only, no bool mask (a comparison is slower on CPU).
        passes = weight.abs().neg_().add_(1).clamp_(min=0).sign_()
        return passes.to(grad_output.dtype).mul_(grad_output)


def binarize_ste(weight: torch.Tensor) -> torch.Tensor:
    """``sign(weight)`` (``0 -> +1``) whose gradient is the straight-through estimator ``1{|w| < 1}``."""
    return _SignSTE.apply(weight)
