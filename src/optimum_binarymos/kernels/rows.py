"""Products with row-quantized matrices (the ``lm_head`` of ``embedding_bits=8`` and ``4``).

* :func:`int8_linear`: int8 codes with one scale per row, ``(x @ Q^T) * scale + bias``.
* :func:`int4_linear`: 4-bit codes with one scale per 32 columns, ``x @ W^T + bias``.

Few tokens on CPU take the native C kernels, which read each code once as a byte or a nibble (a 49152 x 576
``lm_head`` is 27 MiB in 8 bits and 15 MiB in 4, instead of 108 MiB of float32); otherwise blocks of rows are
dequantized one at a time and multiplied with the platform's matmul, so the float matrix never exists whole. The
layouts are :mod:`optimum_binarymos.packing`'s (:func:`~optimum_binarymos.packing.quantize_rows`,
:func:`~optimum_binarymos.packing.quantize_groups4`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..packing import dequantize_groups4, dequantize_rows, groups4_count, groups4_packed_columns
from .native import native_kernels
from .torch_backend import float32_contiguous

#: Largest number of tokens sent to the native kernels; above it a dense matmul reuses each dequantized weight.
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
    in_features = x.shape[1]
    if codes.shape[1] != in_features or tuple(scale.shape) != (codes.shape[0],):
        raise ValueError(
            f"int8_linear: x {tuple(x.shape)}, codes {tuple(codes.shape)} and scale {tuple(scale.shape)} do not fit"
        )
    return _rows_linear(x, codes, scale, bias, "int8_linear", lambda c, s, dtype: dequantize_rows(c, s, dtype))


def int4_linear(
    x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W^T + bias`` for ``W`` stored as :func:`~optimum_binarymos.packing.quantize_groups4`'s codes.

    Args:
        x: ``(M, K)`` float activations.
        codes: ``(N, 16 * ceil(K / 32))`` ``uint8``.
        scale: ``(N, ceil(K / 32))`` float, one per group of 32 columns.
        bias: ``(N,)`` or None.

    Returns:
        ``(M, N)`` in ``x``'s dtype; accumulated in float32 on CPU.
    """
    in_features = x.shape[1]
    expected = (codes.shape[0], groups4_count(in_features))
    if codes.shape[1] != groups4_packed_columns(in_features) or tuple(scale.shape) != expected:
        raise ValueError(
            f"int4_linear: x {tuple(x.shape)}, codes {tuple(codes.shape)} and scale {tuple(scale.shape)} do not fit"
        )
    return _rows_linear(
        x, codes, scale, bias, "int4_linear", lambda c, s, dtype: dequantize_groups4(c, s, in_features, dtype)
    )


def _rows_linear(
    x: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    native_name: str,
    dequantize: Callable[[torch.Tensor, torch.Tensor, torch.dtype], torch.Tensor],
) -> torch.Tensor:
    """The native kernel ``native_name`` for few CPU tokens, else a matmul per dequantized block of rows."""
    tokens, in_features = x.shape
    on_cpu = x.device.type == "cpu"
    kernels = native_kernels() if on_cpu else None
    if kernels is not None and tokens <= NATIVE_MAX_TOKENS:
        if codes.stride(1) != 1:
            codes = codes.contiguous()
        y = getattr(kernels, native_name)(
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
        y[:, start:stop] = operand @ dequantize(codes[start:stop], scale[start:stop], dtype).T
    if bias is not None:
        y += bias.to(dtype)
    return y.to(x.dtype)
