"""Kernels of the packed BinaryMoS linear: Triton on GPU, native C or torch on CPU, one entry point.

:func:`binarymos_linear` computes, from packed signs and without ever storing a float weight::

    s_in  = g @ S_in ;  s_out = g @ S_out     # g: router gates (tokens, E), or the single expert's scales
    y     = ((x * s_in) @ sign(W)^T) * s_out + bias

The backend follows :mod:`.dispatch` (``BINARYMOS_BACKEND`` = ``auto`` | ``triton`` | ``torch``, read at every
call): CUDA tensors go to the Triton kernels of :mod:`.triton` (a split-K GEMV for few tokens, a ``tl.dot``
GEMM otherwise), CPU tensors to :mod:`.torch_backend` (a native C kernel for few tokens, a blocked unpack and
matmul otherwise). The kernels are registered as torch operators (:mod:`.ops`), so ``torch.compile`` traces
through packed layers. Importing this package never imports ``triton``.

Example::

    >>> import torch
    >>> from optimum_binarymos import pack_signs
    >>> from optimum_binarymos.kernels import binarymos_linear
    >>> weight, x = torch.randn(6, 20), torch.randn(3, 20)
    >>> scale_in, scale_out = torch.rand(1, 20), torch.rand(1, 6)
    >>> y = binarymos_linear(x, pack_signs(weight), 20, scale_in, scale_out)
    >>> reference = ((x * scale_in[0]) @ torch.where(weight >= 0, 1.0, -1.0).T) * scale_out[0]
    >>> torch.allclose(y, reference, atol=1e-5)
    True
"""

from __future__ import annotations

import torch

from . import ops
from .dispatch import BACKEND_VARIABLE, BACKENDS, requested_backend, select_backend

__all__ = ["BACKENDS", "BACKEND_VARIABLE", "binarymos_linear", "requested_backend", "select_backend"]


def binarymos_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    in_features: int,
    scale_in: torch.Tensor,
    scale_out: torch.Tensor,
    gates: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Packed BinaryMoS linear on the backend :func:`select_backend` picks for ``x``'s device.

    Args:
        x: ``(..., in_features)`` activations, float32, float16 or bfloat16.
        packed: ``(out_features, ceil(in_features / 8))`` ``uint8`` signs
            (:func:`~optimum_binarymos.pack_signs`).
        in_features: logical number of input columns ``K``.
        scale_in: ``(E, in_features)`` input-side scaling experts.
        scale_out: ``(E, out_features)`` output-side scaling experts.
        gates: ``(..., E)`` float32 router weights, ``softmax(x @ router_weight^T)`` as
            :meth:`~optimum_binarymos.PackedBinaryMoSLinear.router_gates` computes them; None when ``E == 1``.
        bias: ``(out_features,)`` or None.

    Returns:
        ``(..., out_features)`` in ``x``'s dtype. No gradient flows through it (inference only).

    Raises:
        ValueError: on mismatched shapes or an invalid ``BINARYMOS_BACKEND``.
        RuntimeError: when ``BINARYMOS_BACKEND=triton`` cannot run here.
    """
    out_features = packed.shape[0]
    experts = scale_in.shape[0]
    if x.shape[-1] != in_features:
        raise ValueError(f"x has {x.shape[-1]} features in its last dimension, expected {in_features}")
    if scale_in.shape != (experts, in_features) or scale_out.shape != (experts, out_features):
        raise ValueError(
            f"scale_in {tuple(scale_in.shape)} and scale_out {tuple(scale_out.shape)} must be "
            f"({experts}, {in_features}) and ({experts}, {out_features})"
        )
    if gates is None and experts != 1:
        raise ValueError(f"gates are required with {experts} experts")
    if gates is not None and gates.shape != (*x.shape[:-1], experts):
        raise ValueError(f"gates must have shape {(*x.shape[:-1], experts)}, got {tuple(gates.shape)}")
    flat = x.reshape(-1, in_features)
    flat_gates = None if gates is None else gates.reshape(-1, experts)
    if flat.shape[0] == 0:
        return x.new_empty(*x.shape[:-1], out_features)
    # Under torch.compile the operator (one node instead of a graph break); eager skips the dispatcher.
    linear = ops.packed_linear if torch.compiler.is_compiling() else ops.run_packed_linear
    y = linear(flat, packed, in_features, scale_in, scale_out, flat_gates, bias)
    return y.reshape(*x.shape[:-1], out_features)
