"""Triton kernel for the packed ternary matmul ``y = sum_g alpha_g * (x_g @ T_g^T) + gamma_g * sum(x_g)``.

One program computes a ``(BLOCK_M, BLOCK_N)`` tile of ``y`` and walks ``K`` in ``BLOCK_K`` steps. ``BLOCK_K``
divides the group size, so every step lies inside one group: its trits are decoded from the packed bytes
(2-bit pairs or base-3 digits), multiplied with ``tl.dot``, scaled by that group's ``alpha``, and the step's row
sums of ``x`` times ``gamma`` add the shift. Accumulation is float32.

Under ``TRITON_INTERPRET=1`` (no GPU) the kernel runs on CPU tensors: ``tl.dot`` then takes float32 operands
(the interpreter's bf16 dot is wrong) and a single fixed configuration is used (autotuning needs a driver).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...packing import TRITS_PER_BYTE
from .configs import INTERPRETING, tokens_bucket

#: Largest ``BLOCK_K``: a K step never crosses a group, so it is also capped by the group's power-of-two factor.
MAX_BLOCK_K = 128 if INTERPRETING else 64


@triton.jit
def _ternary_matmul_kernel(
    x_ptr,
    codes_ptr,
    scale_ptr,
    shift_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_cn,
    stride_cb,
    stride_sn,
    stride_sg,
    stride_hn,
    stride_hg,
    stride_om,
    stride_on,
    TOKENS_BUCKET,  # only an autotuning key: one tuning per power-of-two number of tokens, not per length
    GROUP_SIZE: tl.constexpr,
    BASE3: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        mask_k = k < K
        # Masked-out x is 0, so padding columns and rows add nothing to the dot or the group sums.
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + k[None, :] * stride_xk,
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )
        if BASE3:
            byte_index = k // 5
        else:
            byte_index = k // 4
        packed = tl.load(
            codes_ptr + offs_n[None, :] * stride_cn + byte_index[:, None] * stride_cb,
            mask=mask_k[:, None] & mask_n[None, :],
            other=0,
        ).to(tl.int32)  # (BLOCK_K, BLOCK_N)
        if BASE3:
            digit = k % 5
            power = tl.where(
                digit == 0,
                1,
                tl.where(digit == 1, 3, tl.where(digit == 2, 9, tl.where(digit == 3, 27, 81))),
            )
            code = (packed // power[:, None]) % 3
        else:
            code = (packed >> ((k % 4) * 2)[:, None]) & 3
        trits = code - 1
        group = k0 // GROUP_SIZE
        alpha = tl.load(scale_ptr + offs_n * stride_sn + group * stride_sg, mask=mask_n, other=0.0)
        gamma = tl.load(shift_ptr + offs_n * stride_hn + group * stride_hg, mask=mask_n, other=0.0)
        if DOT_FP32:
            partial = tl.dot(x.to(tl.float32), trits.to(tl.float32), input_precision="ieee")
        else:
            # -1, 0 and 1 are exact in fp16/bf16: the tensor cores see the true trits.
            partial = tl.dot(x, trits.to(x.dtype))
        acc += partial * alpha.to(tl.float32)[None, :]
        row_sums = tl.sum(x.to(tl.float32), axis=1)
        acc += row_sums[:, None] * gamma.to(tl.float32)[None, :]
    tl.store(
        out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
        acc.to(out_ptr.dtype.element_ty),
        mask=mask_m[:, None] & mask_n[None, :],
    )


def _gpu_configs() -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)
        for block_m, block_n, warps, stages in [
            (16, 64, 4, 3),
            (16, 128, 4, 3),
            (32, 64, 4, 3),
            (32, 128, 4, 4),
            (64, 64, 4, 3),
            (64, 128, 8, 3),
            (128, 128, 8, 3),
        ]
    ]


if INTERPRETING:
    _kernel = _ternary_matmul_kernel
else:
    _kernel = triton.autotune(configs=_gpu_configs(), key=["TOKENS_BUCKET", "N", "K", "GROUP_SIZE", "BASE3"])(
        _ternary_matmul_kernel
    )


def block_k_for(group_size: int) -> int:
    """Largest power of two dividing ``group_size``, capped at :data:`MAX_BLOCK_K` (at least 16 for ``tl.dot``)."""
    block = min(group_size & -group_size, MAX_BLOCK_K)
    if block < 16:
        raise ValueError(
            f"the Triton ternary kernel needs a group size that is a multiple of 16, got {group_size}"
        )
    return block


def ternary_matmul_triton(
    x: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    group_size: int,
    code_packing: str = "2bit",
) -> torch.Tensor:
    """Triton path of :func:`optimum_binarymos.kernels.ternary.ternary_matmul`.

    Args:
        x: ``(M, K)`` float32/float16/bfloat16, any strides.
        codes: ``(N, ceil(K / per_byte))`` ``uint8``.
        scale, shift: ``(N, ceil(K / group_size))``, any float dtype and strides.
        group_size: a multiple of 16.
        code_packing: ``"2bit"`` or ``"base3"``.

    Returns:
        ``(M, N)`` in ``x``'s dtype.
    """
    if x.ndim != 2:
        raise ValueError(f"ternary_matmul_triton expects 2-D x, got shape {tuple(x.shape)}")
    if code_packing not in TRITS_PER_BYTE:
        raise ValueError(f"code_packing must be one of {list(TRITS_PER_BYTE)}, got {code_packing!r}")
    m, k = x.shape
    n = codes.shape[0]
    if codes.dtype != torch.uint8 or codes.shape[1] != -(-k // TRITS_PER_BYTE[code_packing]):
        raise ValueError(f"codes must be uint8 of shape ({n}, ceil({k} / {TRITS_PER_BYTE[code_packing]}))")
    groups = -(-k // group_size)
    if tuple(scale.shape) != (n, groups) or tuple(shift.shape) != (n, groups):
        raise ValueError(f"scale and shift must have shape {(n, groups)}")
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    if m == 0 or n == 0:
        return out
    meta = {
        "GROUP_SIZE": group_size,
        "BASE3": code_packing == "base3",
        "DOT_FP32": INTERPRETING or x.dtype == torch.float32,
        "BLOCK_K": block_k_for(group_size),
    }
    if INTERPRETING:
        # Few, large tiles: the interpreter runs one program at a time in Python.
        meta.update(BLOCK_M=min(64, max(16, triton.next_power_of_2(m))), BLOCK_N=64)

    def grid(config):
        return (triton.cdiv(m, config["BLOCK_M"]), triton.cdiv(n, config["BLOCK_N"]))

    _kernel[grid](
        x,
        codes,
        scale,
        shift,
        out,
        m,
        n,
        k,
        x.stride(0),
        x.stride(1),
        codes.stride(0),
        codes.stride(1),
        scale.stride(0),
        scale.stride(1),
        shift.stride(0),
        shift.stride(1),
        out.stride(0),
        out.stride(1),
        tokens_bucket(m),
        **meta,
    )
    return out
