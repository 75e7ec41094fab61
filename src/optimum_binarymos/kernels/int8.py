"""Products with 8-bit row-scaled matrices (the ``lm_head`` of ``embedding_bits=8``): ``(x @ Q^T) * scale + bias``.

Few tokens on CPU take the native C kernel, which reads each code once as a byte (a 49152 x 576 ``lm_head`` is
27 MiB instead of 108 MiB of float32); otherwise blocks of rows are dequantized one at a time and multiplied with
the platform's matmul, so the float matrix never exists whole. The layout is :mod:`optimum_binarymos.packing`'s
(:func:`~optimum_binarymos.packing.quantize_rows`).
"""

from __future__ import annotations

import torch

from ..packing import dequantize_rows
from .native import native_kernels
from .torch_backend import float32_contiguous

#: Largest number of tokens sent to the native kernel; above it a dense matmul reuses each dequantized weight.
NATIVE_MAX_TOKENS = 32

#: Float elements of one dequantized block of rows (4 MiB in float32).
DEQUANTIZE_BLOCK_ELEMENTS = 1 << 20


def int8_linear(
    x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``(x @ (codes * scale[:, None])^T) + bias``.

    Args:
        x: ``(M, K)`` float activations.
        codes: ``(N, K)`` ``int8``.
        scale: ``(N,)`` float, one per row of ``codes``.
        bias: ``(N,)`` or None.

    Returns:
        ``(M, N)`` in ``x``'s dtype; accumulated in float32 on CPU.
    """
    tokens, in_features = x.shape
    if codes.shape[1] != in_features or tuple(scale.shape) != (codes.shape[0],):
        raise ValueError(
            f"int8_linear: x {tuple(x.shape)}, codes {tuple(codes.shape)} and scale {tuple(scale.shape)} do not fit"
        )
    on_cpu = x.device.type == "cpu"
    kernels = native_kernels() if on_cpu else None
    if kernels is not None and tokens <= NATIVE_MAX_TOKENS:
        if codes.stride(1) != 1:
            codes = codes.contiguous()
        y = kernels.int8_linear(
            float32_contiguous(x), codes, float32_contiguous(scale), float32_contiguous(bias)
        )
        return y.to(x.dtype)
    dtype = torch.float32 if on_cpu else x.dtype  # half-precision matmuls are slow on most CPUs
    operand = x.to(dtype)
    out_features = codes.shape[0]
    y = torch.empty(tokens, out_features, dtype=dtype, device=x.device)
    rows = max(1, DEQUANTIZE_BLOCK_ELEMENTS // max(in_features, 1))
    for start in range(0, out_features, rows):
        stop = min(start + rows, out_features)
        y[:, start:stop] = operand @ dequantize_rows(codes[start:stop], scale[start:stop], dtype).T
    if bias is not None:
        y += bias.to(dtype)
    return y.to(x.dtype)
