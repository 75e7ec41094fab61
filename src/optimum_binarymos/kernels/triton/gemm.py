"""``tl.dot`` GEMM strategy of the packed BinaryMoS linear, for many tokens (prefill, batches).

A program computes a ``(BLOCK_M, BLOCK_N)`` tile of ``y`` and walks ``K`` in ``BLOCK_K`` steps. At each step
it loads the activations and multiplies them by the router-mixed ``s_in`` (``sum_e g[m, e] * S_in[e, k]``,
formed in registers), expands the packed bytes of the ``(BLOCK_K, BLOCK_N)`` weight tile to +-1 (exact in
every float dtype) and feeds both to ``tl.dot`` with a float32 accumulator. The epilogue multiplies by the
mixed ``s_out`` and adds the bias before the one store. Program ids are grouped ``GROUP_M`` row tiles at a
time so that neighbouring programs share weight tiles in L2.

Operand dtype of the dot: the activations' own (float16 or bfloat16: tensor cores), float32 with IEEE
precision for float32 activations (as ``F.linear`` does by default), and float32 for bfloat16 in Triton's
interpreter, whose bfloat16 dot is wrong.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import INTERPRETING, gemm_configs, prune_gemm_configs, tokens_bucket
from .tiles import mixed_scale_tile, sign_bits_kn


@triton.autotune(
    configs=gemm_configs(),
    key=["TOKENS_BUCKET", "N", "K", "NUM_EXPERTS", "HAS_BIAS"],
    prune_configs_by={"early_config_prune": prune_gemm_configs},
)
@triton.jit
def binarymos_gemm_kernel(
    x_ptr,
    w_ptr,
    gates_ptr,
    scale_in_ptr,
    scale_out_ptr,
    bias_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_ym,
    TOKENS_BUCKET,  # only an autotuning key
    NUM_EXPERTS: tl.constexpr,
    HAS_GATES: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: GROUP_M row tiles sweep the same column tiles one after another, sharing weights in L2.
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    k_bytes = (K + 7) // 8

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        ).to(tl.float32)
        x *= mixed_scale_tile(
            gates_ptr, offs_m, mask_m, scale_in_ptr, offs_k, mask_k, K, NUM_EXPERTS, HAS_GATES
        )
        bits = sign_bits_kn(w_ptr, offs_n, k0 // 8, N, k_bytes, stride_wn, BLOCK_N, BLOCK_K)
        signs = (bits * 2 - 1).to(DOT_DTYPE)
        if DOT_DTYPE == tl.float32:
            acc = tl.dot(x, signs, acc, input_precision="ieee")
        else:
            acc = tl.dot(x.to(DOT_DTYPE), signs, acc)

    y = acc * mixed_scale_tile(
        gates_ptr, offs_m, mask_m, scale_out_ptr, offs_n, mask_n, N, NUM_EXPERTS, HAS_GATES
    )
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(
        y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :],
        y.to(y_ptr.dtype.element_ty),
        mask=mask_m[:, None] & mask_n[None, :],
    )


def dot_dtype(dtype: torch.dtype):
    """Triton dtype of the ``tl.dot`` operands for activations of ``dtype``."""
    if dtype == torch.float16:
        return tl.float16
    if dtype == torch.bfloat16 and not INTERPRETING:
        return tl.bfloat16
    return tl.float32


def gemm(
    x: torch.Tensor,
    packed: torch.Tensor,
    in_features: int,
    scale_in: torch.Tensor,
    scale_out: torch.Tensor,
    gates: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """Launch :func:`binarymos_gemm_kernel`; arguments as :func:`~.gemv.gemv`.

    Returns:
        ``(M, N)`` in ``x``'s dtype.
    """
    tokens = x.shape[0]
    out_features = packed.shape[0]
    y = torch.empty(tokens, out_features, dtype=x.dtype, device=x.device)

    def grid(meta):
        return (triton.cdiv(tokens, meta["BLOCK_M"]) * triton.cdiv(out_features, meta["BLOCK_N"]),)

    binarymos_gemm_kernel[grid](
        x,
        packed,
        gates if gates is not None else scale_in,  # never read without gates
        scale_in,
        scale_out,
        bias if bias is not None else scale_out,  # never read without bias
        y,
        tokens,
        out_features,
        in_features,
        x.stride(0),
        packed.stride(0),
        y.stride(0),
        tokens_bucket(tokens),
        NUM_EXPERTS=scale_in.shape[0],
        HAS_GATES=gates is not None,
        HAS_BIAS=bias is not None,
        DOT_DTYPE=dot_dtype(x.dtype),
    )
    return y
