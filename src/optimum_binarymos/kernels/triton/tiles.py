"""Tile loaders shared by the BinaryMoS kernels: sign bits read straight from the packed bytes, and the
experts' scales mixed by the router gates inside the kernel (so no ``(tokens, K)`` or ``(tokens, N)`` scale
tensor is ever written to memory).

Packed layout (:mod:`optimum_binarymos.packing`): ``uint8`` ``(N, ceil(K / 8))``, bit ``j`` (least significant
first) of byte ``b`` in row ``n`` is the sign of column ``8 * b + j``, 1 meaning +1. Bytes past the row and
rows past ``N`` load as 0; callers load the activations of columns ``>= K`` as 0, so padding bits add nothing.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def sign_bits_nbj(
    w_ptr, offs_n, byte_start, N, K_BYTES, stride_wn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr
):
    """``(BLOCK_N, BLOCK_K // 8, 8)`` int32 bits (1 = +1): ``[n, b, j]`` is column ``8 * (byte_start + b) + j``
    of row ``offs_n[n]``. Kept 3-D so that no reshape (a layout change on a GPU) is needed when the
    activations are loaded as ``(BLOCK_K // 8, 8)``."""
    offs_b = byte_start + tl.arange(0, BLOCK_K // 8)
    mask = (offs_n[:, None] < N) & (offs_b[None, :] < K_BYTES)
    packed = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_b[None, :], mask=mask, other=0).to(tl.int32)
    return (packed[:, :, None] >> tl.arange(0, 8)[None, None, :]) & 1


@triton.jit
def sign_bits_kn(
    w_ptr, offs_n, byte_start, N, K_BYTES, stride_wn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr
):
    """``(BLOCK_K, BLOCK_N)`` int32 bits (1 = +1), the transposed tile that ``tl.dot(x, signs)`` takes."""
    offs_b = byte_start + tl.arange(0, BLOCK_K // 8)
    mask = (offs_b[:, None] < K_BYTES) & (offs_n[None, :] < N)
    packed = tl.load(w_ptr + offs_b[:, None] + offs_n[None, :] * stride_wn, mask=mask, other=0).to(tl.int32)
    bits = (packed[:, None, :] >> tl.arange(0, 8)[None, :, None]) & 1  # (bytes, 8, BLOCK_N): row 8 b + j
    return tl.reshape(bits, (BLOCK_K, BLOCK_N))


@triton.jit
def mixed_scale_row(
    gates_row_ptr, table_ptr, offs, mask, length, NUM_EXPERTS: tl.constexpr, HAS_GATES: tl.constexpr
):
    """One token's scale over ``offs``: ``sum_e g[e] * table[e, offs]`` in float32 (``table[0, offs]`` without
    gates); ``table`` is ``(E, length)`` contiguous and masked-out positions are 0."""
    scale = tl.load(table_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_GATES:
        scale = scale * tl.load(gates_row_ptr)
        for e in tl.static_range(1, NUM_EXPERTS):
            expert = tl.load(table_ptr + e * length + offs, mask=mask, other=0.0).to(tl.float32)
            scale += tl.load(gates_row_ptr + e) * expert
    return scale


@triton.jit
def mixed_scale_tile(
    gates_ptr,
    offs_m,
    mask_m,
    table_ptr,
    offs,
    mask,
    length,
    NUM_EXPERTS: tl.constexpr,
    HAS_GATES: tl.constexpr,
):
    """Scales of tokens ``offs_m`` over ``offs``: ``(BLOCK_M, len(offs))`` float32 with gates (``gates`` is
    ``(M, E)`` contiguous float32), else the single expert's ``(1, len(offs))`` row, which broadcasts."""
    scale = tl.load(table_ptr + offs, mask=mask, other=0.0).to(tl.float32)[None, :]
    if HAS_GATES:
        gate = tl.load(gates_ptr + offs_m * NUM_EXPERTS, mask=mask_m, other=0.0)
        scale = gate[:, None] * scale
        for e in tl.static_range(1, NUM_EXPERTS):
            expert = tl.load(table_ptr + e * length + offs, mask=mask, other=0.0).to(tl.float32)
            gate = tl.load(gates_ptr + offs_m * NUM_EXPERTS + e, mask=mask_m, other=0.0)
            scale += gate[:, None] * expert[None, :]
    return scale
