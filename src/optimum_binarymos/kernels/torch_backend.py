"""The torch backend of the packed BinaryMoS linear: any device, any number of tokens.

The product with the signs, ``scaled @ sign(W)^T``, takes one of two strategies, picked by the number of
tokens ``M``:

* CPU and ``M <= NATIVE_MAX_TOKENS``: the native C kernel (:mod:`optimum_binarymos.kernels.native`), which
  sums the scaled activations that each bit selects without ever building a float weight. Its cost grows with
  ``M`` while a dense matmul reuses each weight for every token, hence the bound.
* otherwise: unpack the signs one block of output rows at a time and multiply with the platform's matmul. The
  float block (4 MiB) lives for one call and is never cached, so the weights stay at 1 bit in memory.

With ``activation_bits=8`` the scaled activations ``x * s_in`` are rounded to int8 per token
(:func:`quantize_activations`) before the product: on CPU the native int8 kernel takes every number of tokens (it
beats unpacking and a float matmul at any ``M``), elsewhere the rounding is applied in torch and the float product
follows, so every backend computes the same function.

float32 activations on CPU take the native kernel with the whole layer fused (mixture of scales, bias). Other
dtypes follow the rounding steps of the reference forward (``_MixtureOfScalesMixin.forward``): scales and
``x * s_in`` in the activations' dtype, the product accumulated in float32 and rounded once, then ``* s_out``
and ``+ bias`` in the activations' dtype, so that a packed half-precision model gives the latent model's
outputs.
"""

from __future__ import annotations

import torch

from ..packing import unpack_signs
from .native import NativeKernels, native_kernels

#: Largest number of tokens sent to the native kernel; above it, unpacking a block then a dense matmul is
#: faster (between 32 and 48 tokens for 4096 x 4096 on AVX2: ``benchmarks/cpu_kernels.py --tokens 16 32 48 64
#: --strategies``).
NATIVE_MAX_TOKENS = 32

#: Float elements of one unpacked block of weights: 4 MiB in float32, which the matmul then reads from cache.
#: On one core, 16 MiB blocks measured 10-30 % slower at 48 and 128 tokens.
UNPACK_BLOCK_ELEMENTS = 1 << 20


def packed_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    in_features: int,
    scale_in: torch.Tensor,
    scale_out: torch.Tensor,
    gates: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    use_native: bool = True,
    router_weight: torch.Tensor | None = None,
    activation_bits: int | None = None,
) -> torch.Tensor:
    """``((x * s_in) @ sign(W)^T) * s_out + bias`` for 2-D ``x``.

    Args:
        x: ``(M, K)`` activations (float32, float16 or bfloat16).
        packed: ``(N, ceil(K / 8))`` ``uint8`` signs in the layout of :mod:`optimum_binarymos.packing`.
        in_features: ``K``.
        scale_in: ``(E, K)``; scale_out: ``(E, N)``: the scaling experts.
        gates: ``(M, E)`` float32 router weights (softmax output), or None when ``E == 1``.
        bias: ``(N,)`` or None.
        use_native: allow the native CPU kernel (False: pure torch, unpack and matmul).
        router_weight: ``(E, K)``, given instead of ``gates``: the gates are ``softmax(x @ router_weight^T)``
            (computed by the native kernel itself when it runs).
        activation_bits: None, or 8 to round ``x * s_in`` to int8 per token first (:func:`quantize_activations`).

    Returns:
        ``(M, N)`` in ``x``'s dtype.
    """
    kernels = native_kernels() if use_native and x.device.type == "cpu" else None
    if packed.stride(-1) != 1:
        packed = packed.contiguous()
    # The native kernel: float32 with few tokens, or any number of tokens with int8 activations (it beats unpacking
    # and a float matmul at every M); it computes in float32 whatever x's dtype.
    if kernels is not None and (
        activation_bits is not None or (x.dtype == torch.float32 and x.shape[0] <= NATIVE_MAX_TOKENS)
    ):
        flat = x.to(torch.float32)
        if flat.stride(-1) != 1:
            flat = flat.contiguous()
        y = kernels.linear(
            flat, packed, in_features, float32_contiguous(scale_in), float32_contiguous(scale_out),
            float32_contiguous(gates), float32_contiguous(bias), float32_contiguous(router_weight),
            activation_bits=activation_bits,
        )  # fmt: skip
        return y.to(x.dtype)
    if gates is None and router_weight is not None:
        gates = router_gates(x, router_weight)
    # int8 activations are rounded in float32, as the native kernel rounds them
    dtype = x.dtype if activation_bits is None else torch.float32
    s_in, s_out = mixed_scales(gates, scale_in, scale_out, dtype)
    scaled = x.to(dtype) * s_in
    if activation_bits is not None:
        scaled = quantize_activations(scaled)
    y = signed_sums(scaled, packed, in_features, kernels) * s_out
    if bias is not None:
        y = y + bias.to(dtype)
    return y.to(x.dtype)


def quantize_activations(scaled: torch.Tensor) -> torch.Tensor:
    """``scaled`` rounded to int8 per token and returned as float32: ``round(s * 127 / max|s|) * max|s| / 127`` for
    each row ``s`` (rounding half to even), what ``activation_bits=8`` multiplies the signs by. A zero row stays
    zero; a row holding a non-finite value becomes NaN.

    Args:
        scaled: ``(..., K)`` activations, already multiplied by the input scales.

    Returns:
        ``(..., K)`` float32.

    Example::

        >>> import torch
        >>> from optimum_binarymos.kernels import quantize_activations
        >>> quantize_activations(torch.tensor([[1.0, -0.5, 0.003], [0.0, 0.0, 0.0]]))
        tensor([[ 1.0000, -0.5039,  0.0000],
                [ 0.0000,  0.0000,  0.0000]])
    """
    values = scaled.to(torch.float32)
    largest = values.abs().amax(dim=-1, keepdim=True)
    inverse = torch.where(largest > 0, 127.0 / largest, torch.zeros_like(largest))
    codes = torch.round(values * inverse)
    dequantized = codes * (largest / 127.0)
    return torch.where(torch.isfinite(largest), dequantized, torch.full_like(dequantized, float("nan")))


def router_gates(x: torch.Tensor, router_weight: torch.Tensor) -> torch.Tensor:
    """``softmax(x @ router_weight^T)`` ``(M, E)`` in float32, the logits in ``x``'s dtype as the layers compute
    them."""
    return torch.softmax(torch.nn.functional.linear(x, router_weight.to(x.dtype)).float(), dim=-1)


def float32_contiguous(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """``tensor`` as the native kernels take it (float32, contiguous), copied only when it is not; None stays."""
    if tensor is None or (tensor.dtype == torch.float32 and tensor.is_contiguous()):
        return tensor  # the float32 model's own tensors: no copy, no call
    return tensor.to(torch.float32).contiguous()


def mixed_scales(
    gates: torch.Tensor | None, scale_in: torch.Tensor, scale_out: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-adaptive ``(s_in, s_out)`` in ``dtype``, mixed in the tables' dtype as the reference forward
    does: ``(M, K)`` and ``(M, N)``, or the single expert's ``(K,)`` and ``(N,)`` without gates."""
    if gates is None:
        return scale_in[0].to(dtype), scale_out[0].to(dtype)
    mixing = gates.to(scale_in.dtype)
    return (mixing @ scale_in).to(dtype), (mixing @ scale_out).to(dtype)


def signed_sums(
    scaled: torch.Tensor, packed: torch.Tensor, in_features: int, kernels: NativeKernels | None = None
) -> torch.Tensor:
    """``scaled @ sign(W)^T``: ``(M, K)`` -> ``(M, N)`` in ``scaled``'s dtype.

    On CPU the sums accumulate in float32 and are rounded once; with ``kernels``, few tokens take the native
    kernel and blocks are unpacked by it.
    """
    tokens = scaled.shape[0]
    on_cpu = scaled.device.type == "cpu"
    if kernels is not None and tokens <= NATIVE_MAX_TOKENS:
        return kernels.linear(
            scaled.to(torch.float32).contiguous(), packed, in_features, None, None, None, None
        ).to(scaled.dtype)
    dtype = torch.float32 if on_cpu else scaled.dtype  # half-precision matmuls are slow on most CPUs
    operand = scaled.to(dtype)
    out_features = packed.shape[0]
    y = torch.empty(tokens, out_features, dtype=dtype, device=scaled.device)
    rows = max(1, UNPACK_BLOCK_ELEMENTS // max(in_features, 1))
    block = torch.empty(min(rows, out_features), in_features) if kernels is not None else None
    for start in range(0, out_features, rows):
        stop = min(start + rows, out_features)
        if block is not None:
            signs = kernels.unpack(packed[start:stop], in_features, out=block[: stop - start])
        else:
            signs = unpack_signs(packed[start:stop], in_features, dtype)
        y[:, start:stop] = operand @ signs.T
    return y.to(scaled.dtype)
