"""The packed kernels as torch operators (``torch.ops.optimum_binarymos.*``), so that ``torch.compile`` traces a
packed model whole instead of breaking its graph at every layer.

Each operator takes 2-D activations, picks its backend (:mod:`.dispatch`) when it runs and has a fake
(meta) implementation giving the output's shape and dtype, which is all the compiler needs to know about it.
Eager code calls the plain functions (:func:`run_packed_linear`, :func:`.ternary.ternary_matmul_inference`):
the dispatcher costs tens of microseconds a call on CPU, paid about 200 times per decoded token by a 135M model.
The operators have no backward: the layers call them only when no gradient is needed, and take the
differentiable reference path otherwise.
"""

from __future__ import annotations

import torch

from .dispatch import select_backend
from .ternary import ternary_matmul_inference

NAMESPACE = "optimum_binarymos"


def run_packed_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    in_features: int,
    scale_in: torch.Tensor,
    scale_out: torch.Tensor,
    gates: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``((x * s_in) @ sign(W)^T) * s_out + bias``: ``x`` ``(M, K)`` -> ``(M, N)`` in ``x``'s dtype, on the
    backend :func:`.dispatch.select_backend` picks (arguments as :func:`optimum_binarymos.kernels.binarymos_linear`)."""
    if select_backend(x.device) == "triton":
        from .triton.linear import packed_linear as backend_linear
    else:
        from .torch_backend import packed_linear as backend_linear
    return backend_linear(x, packed, in_features, scale_in, scale_out, gates, bias)


packed_linear = torch.library.custom_op(f"{NAMESPACE}::packed_linear", run_packed_linear, mutates_args=())


@packed_linear.register_fake
def _(x, packed, in_features, scale_in, scale_out, gates, bias):
    return x.new_empty(x.shape[0], packed.shape[0])


ternary_matmul = torch.library.custom_op(f"{NAMESPACE}::ternary_matmul", ternary_matmul_inference, mutates_args=())


@ternary_matmul.register_fake
def _(x, codes, scale, shift, in_features, group_size, code_packing):
    return x.new_empty(x.shape[0], codes.shape[0])
