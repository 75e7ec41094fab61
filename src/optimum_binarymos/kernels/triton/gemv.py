"""Split-K GEMV strategy of the packed BinaryMoS linear, for a few tokens (decoding).

Grid ``(cdiv(N, BLOCK_N), SPLIT_K, M)``: a program takes one token, ``BLOCK_N`` outputs and one of ``SPLIT_K``
slices of ``K``. It loads the packed bytes of its ``(BLOCK_N, BLOCK_K)`` tile, expands them to bits in
registers, scales the activations by the router-mixed ``s_in`` as they are loaded, and accumulates
``sum_k (+-)x_k s_in_k`` in float32 (no multiply: a sign picks ``x`` or ``-x``). The epilogue multiplies by
the mixed ``s_out`` (a linear factor, so it may be applied to each split's partial sum) and adds the bias from
the first split only. With few tokens the work is reading the weights, and splitting ``K`` gives the GPU enough
programs to do it at full bandwidth.

At one token the weights of a layer are read in about a microsecond, as long as launching a kernel, so the
output path depends on the configuration the autotuner picks: without a split (``SPLIT_K = 1``) the kernel
stores the result in the activations' dtype and is the only launch; with splits, a per-configuration pre-hook
zeroes a float32 buffer, the splits add into it atomically and one cast follows. The order in which splits
land is not fixed, so with splits the last bits of the result may vary from run to run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import gemv_configs, prune_gemv_configs, tokens_bucket
from .tiles import mixed_scale_row, sign_bits_nbj


@triton.autotune(
    configs=gemv_configs(),
    key=["TOKENS_BUCKET", "N", "K", "NUM_EXPERTS", "HAS_BIAS"],
    prune_configs_by={"early_config_prune": prune_gemv_configs},
)
@triton.jit
def binarymos_gemv_kernel(
    x_ptr,
    w_ptr,
    gates_ptr,
    scale_in_ptr,
    scale_out_ptr,
    bias_ptr,
    out_ptr,
    partial_ptr,
    N,
    K,
    stride_xm,
    stride_wn,
    TOKENS_BUCKET,  # only an autotuning key
    NUM_EXPERTS: tl.constexpr,
    HAS_GATES: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    token = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    k_bytes = (K + 7) // 8
    tiles_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K)
    k_start = pid_k * tiles_per_split * BLOCK_K
    k_stop = tl.minimum(k_start + tiles_per_split * BLOCK_K, K)
    gates_row = gates_ptr + token * NUM_EXPERTS

    # Columns k0 + 8 b + j of a K step, as a (BLOCK_K // 8, 8) tile that matches the bits' layout.
    offs_bj = tl.arange(0, BLOCK_K // 8)[:, None] * 8 + tl.arange(0, 8)[None, :]
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(k_start, k_stop, BLOCK_K):
        offs_k = k0 + offs_bj
        mask_k = offs_k < K
        x = tl.load(x_ptr + token * stride_xm + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        x *= mixed_scale_row(gates_row, scale_in_ptr, offs_k, mask_k, K, NUM_EXPERTS, HAS_GATES)
        bits = sign_bits_nbj(w_ptr, offs_n, k0 // 8, N, k_bytes, stride_wn, BLOCK_N, BLOCK_K)
        signed = tl.where(bits != 0, x[None, :, :], -x[None, :, :])
        acc += tl.sum(tl.sum(signed, axis=2), axis=1)

    y = acc * mixed_scale_row(gates_row, scale_out_ptr, offs_n, mask_n, N, NUM_EXPERTS, HAS_GATES)
    if HAS_BIAS:
        # Every split adds its partial sum; only the first adds the bias (the others load nothing).
        bias_limit = tl.where(pid_k == 0, N, 0)
        y += tl.load(bias_ptr + offs_n, mask=offs_n < bias_limit, other=0.0).to(tl.float32)
    if SPLIT_K == 1:
        tl.store(out_ptr + token * N + offs_n, y.to(out_ptr.dtype.element_ty), mask=mask_n)
    else:
        tl.atomic_add(partial_ptr + token * N + offs_n, y, mask=mask_n)


def gemv(
    x: torch.Tensor,
    packed: torch.Tensor,
    in_features: int,
    scale_in: torch.Tensor,
    scale_out: torch.Tensor,
    gates: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """Launch :func:`binarymos_gemv_kernel`; arguments as :func:`optimum_binarymos.kernels.binarymos_linear`
    with 2-D ``x`` ``(M, K)`` (unit column stride), contiguous scales and ``(M, E)`` contiguous float32 gates.

    Returns:
        ``(M, N)`` in ``x``'s dtype.
    """
    tokens = x.shape[0]
    out_features = packed.shape[0]
    out = torch.empty(tokens, out_features, dtype=x.dtype, device=x.device)
    # Only configurations with splits write here; their pre-hook zeroes it (no launch otherwise).
    partial = torch.empty(tokens, out_features, dtype=torch.float32, device=x.device)

    def grid(meta):
        return (triton.cdiv(out_features, meta["BLOCK_N"]), meta["SPLIT_K"], tokens)

    binarymos_gemv_kernel[grid](
        x,
        packed,
        gates if gates is not None else scale_in,  # never read without gates; any valid pointer will do
        scale_in,
        scale_out,
        bias if bias is not None else scale_out,  # never read without bias
        out,
        partial,
        out_features,
        in_features,
        x.stride(0),
        packed.stride(0),
        tokens_bucket(tokens),
        NUM_EXPERTS=scale_in.shape[0],
        HAS_GATES=gates is not None,
        HAS_BIAS=bias is not None,
    )
    if binarymos_gemv_kernel.best_config.kwargs["SPLIT_K"] > 1:
        out.copy_(partial)
    return out
