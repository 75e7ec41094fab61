"""Packed ternary matmul: backend choice and the torch path.

``ternary_matmul`` computes, for ``x`` of shape ``(..., K)`` and a packed ``(N, K)`` ternary weight with
per-group scale ``alpha`` and shift ``gamma`` ``(N, G)``::

    y = sum_g alpha_g * (x_g @ T_g^T) + gamma_g * sum(x_g)        # (..., N)

The shift costs one group-sum of ``x``; ``T`` never becomes a float weight with the shift folded in. On CPU, few
float32 tokens with ``"2bit"`` codes take the native C kernel (:meth:`~optimum_binarymos.kernels.native.NativeKernels.
ternary`), which reads the codes a byte at a time and never unpacks a weight; everything else unpacks and
multiplies (``"base3"`` codes, half-precision activations, which follow the latent layer's rounding steps).
The backend is a name of :mod:`.dispatch` (``auto`` | ``triton`` | ``torch``: a packed layer passes its
``kernel_backend``; None reads ``BINARYMOS_BACKEND`` at the call), resolved when the kernel runs to ``"triton"``
(:mod:`.triton.ternary`; CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``) or ``"torch"`` (any device,
any batch). The Triton kernel tiles each group by at least 16 columns, so ``auto`` takes the torch path for
other group sizes. Without autograd the kernel runs as the ``optimum_binarymos::ternary_matmul`` operator
(:mod:`.ops`), in eager mode as under ``torch.compile``.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from ..packing import unpack_ternary
from ..recompute import linear_recomputing_weight
from .dispatch import requested_backend, select_backend, validate_backend
from .native import native_kernels
from .torch_backend import float32_contiguous

#: Largest number of tokens sent to the native kernel (like the BinaryMoS one, its cost grows with the tokens).
NATIVE_MAX_TOKENS = 32

#: The Triton kernel tiles each group by at least 16 columns (the smallest ``tl.dot`` tile).
TRITON_GROUP_MULTIPLE = 16


def select_ternary_backend(x: torch.Tensor, group_size: int, requested: str | None = None) -> str:
    """``"triton"`` or ``"torch"`` for this call: :func:`.dispatch.select_backend` of ``requested`` (None:
    ``BINARYMOS_BACKEND``, read now), then the group-size rule.

    Raises:
        ValueError: for an unknown backend name.
        RuntimeError: when ``triton`` is forced but cannot run these inputs.
    """
    requested = requested_backend() if requested is None else validate_backend(requested)
    backend = select_backend(x.device, requested)
    if backend == "triton" and group_size % TRITON_GROUP_MULTIPLE:
        if requested == "triton":
            raise RuntimeError(
                f"kernel backend 'triton' but the Triton ternary kernel needs a group size that is a multiple "
                f"of {TRITON_GROUP_MULTIPLE} (got {group_size}); choose 'auto' or 'torch' "
                "(`layer.kernel_backend`, `optimum_binarymos.kernels.set_kernel_backend` or BINARYMOS_BACKEND)."
            )
        return "torch"
    return backend


def ternary_matmul(
    x: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    in_features: int,
    group_size: int,
    code_packing: str = "2bit",
    backend: str | None = None,
) -> torch.Tensor:
    """``sum_g alpha_g * (x_g @ T_g^T) + gamma_g * sum(x_g)`` on the backend ``backend`` resolves to.

    Args:
        x: ``(..., in_features)`` activations (float32, float16 or bfloat16).
        codes: ``(N, ceil(in_features / per_byte))`` ``uint8`` packed trits (:func:`~optimum_binarymos.packing.pack_ternary`).
        scale, shift: ``(N, ceil(in_features / group_size))`` per-group alpha and gamma.
        in_features: logical ``K``.
        group_size: input columns per group.
        code_packing: ``"2bit"`` or ``"base3"``.
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (:mod:`.dispatch`); None reads ``BINARYMOS_BACKEND`` now.

    Returns:
        ``(..., N)`` in ``x``'s dtype.

    Raises:
        ValueError: on a mismatched ``x`` or an unknown backend name.
        RuntimeError: when ``triton`` is forced but cannot run these inputs.
    """
    if x.shape[-1] != in_features:
        raise ValueError(f"x has {x.shape[-1]} features in its last dimension, expected {in_features}")
    flat = x.reshape(-1, in_features)
    # The Triton kernel has no backward; activations that need a gradient (adapters training over a packed
    # model) take the differentiable torch path.
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, scale, shift))
    if needs_grad:
        y = ternary_matmul_torch(flat, codes, scale, shift, in_features, group_size, code_packing)
    else:
        if backend is None:
            backend = requested_backend()
        # The operator of .ops (registered when the kernels package is imported, which importing this module
        # does first): one node under torch.compile, a few microseconds of dispatch in eager mode.
        y = torch.ops.optimum_binarymos.ternary_matmul.default(
            flat, codes, scale, shift, in_features, group_size, code_packing, backend
        )
    return y.reshape(*x.shape[:-1], codes.shape[0])


def ternary_matmul_inference(
    x: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    in_features: int,
    group_size: int,
    code_packing: str,
    backend: str = "auto",
) -> torch.Tensor:
    """:func:`ternary_matmul` for 2-D ``x`` ``(M, K)`` without autograd, on the backend
    :func:`select_ternary_backend` picks (the body of the ``optimum_binarymos::ternary_matmul`` operator)."""
    if select_ternary_backend(x, group_size, backend) == "triton":
        from .triton.ternary import ternary_matmul_triton

        return ternary_matmul_triton(x, codes, scale, shift, group_size, code_packing)
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and code_packing == "2bit"
        and group_size % 8 == 0
        and x.shape[0] <= NATIVE_MAX_TOKENS
    ):
        kernels = native_kernels()
        if kernels is not None:
            return kernels.ternary(
                x if x.stride(-1) == 1 else x.contiguous(),
                codes if codes.stride(-1) == 1 else codes.contiguous(),
                float32_contiguous(scale),
                float32_contiguous(shift),
                group_size,
            )
    return ternary_matmul_torch(x, codes, scale, shift, in_features, group_size, code_packing)


def ternary_matmul_torch(
    x: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    in_features: int,
    group_size: int,
    code_packing: str = "2bit",
) -> torch.Tensor:
    """Torch path of :func:`ternary_matmul` for 2-D ``x`` ``(M, K)``; returns ``(M, N)`` in ``x``'s dtype.

    ``alpha`` is folded into the trits (``alpha * T`` is exact in any float dtype since ``T`` is -1, 0 or 1), so
    the scale part is one matmul; the shift part is the group sums of ``x`` times ``gamma``, in float32.
    """
    groups = scale.shape[1]
    padding = groups * group_size - in_features
    make_weight = partial(
        _scaled_trits,
        in_features=in_features,
        group_size=group_size,
        code_packing=code_packing,
        dtype=x.dtype,
    )
    # Under autograd (adapters over a packed model) the dense alpha * T is made again in backward, not kept.
    y = linear_recomputing_weight(x, make_weight, codes, scale)
    group_sums = F.pad(x, (0, padding)).view(x.shape[0], groups, group_size).float().sum(-1)  # (M, G)
    return (y.float() + group_sums @ shift.float().T).to(x.dtype)


def _scaled_trits(
    codes: torch.Tensor,
    scale: torch.Tensor,
    in_features: int,
    group_size: int,
    code_packing: str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``alpha * T`` ``(N, K)`` in ``dtype`` from packed codes and the per-group ``(N, G)`` scale."""
    out_features, groups = scale.shape
    padding = groups * group_size - in_features
    trits = unpack_ternary(codes, in_features, code_packing, dtype=dtype)
    grouped = F.pad(trits, (0, padding)).view(out_features, groups, group_size)
    return (grouped * scale.to(dtype).unsqueeze(-1)).flatten(1)[:, :in_features]
