"""Entry point of the Triton backend: checks and prepares the operands, then picks GEMV or GEMM by tokens."""

from __future__ import annotations

import torch

from .configs import GEMV_MAX_TOKENS, INTERPRETING
from .gemm import gemm
from .gemv import gemv

STRATEGIES = {"gemv": gemv, "gemm": gemm}


def choose_strategy(tokens: int) -> str:
    """``"gemv"`` up to :data:`~.configs.GEMV_MAX_TOKENS` tokens, ``"gemm"`` above."""
    return "gemv" if tokens <= GEMV_MAX_TOKENS else "gemm"


def packed_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    in_features: int,
    scale_in: torch.Tensor,
    scale_out: torch.Tensor,
    gates: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    strategy: str | None = None,
) -> torch.Tensor:
    """``((x * s_in) @ sign(W)^T) * s_out + bias`` for 2-D ``x`` ``(M, K)`` with Triton.

    Arguments as :func:`optimum_binarymos.kernels.torch_backend.packed_linear`; ``strategy`` forces ``"gemv"``
    or ``"gemm"`` (default: :func:`choose_strategy`). Returns ``(M, N)`` in ``x``'s dtype.

    Raises:
        RuntimeError: for CPU tensors when the kernels were not imported under ``TRITON_INTERPRET=1``.
        ValueError: for an unknown strategy or an unsupported dtype.
    """
    if x.device.type == "cpu" and not INTERPRETING:
        raise RuntimeError(
            "Triton kernels on CPU tensors need TRITON_INTERPRET=1 set before "
            "optimum_binarymos.kernels.triton is first imported"
        )
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"the Triton kernels take float32, float16 or bfloat16 activations, got {x.dtype}")
    strategy = strategy or choose_strategy(x.shape[0])
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
    # The kernels index the last dimension of x and of the packed rows with unit stride, and the expert
    # tables, gates and bias as dense arrays.
    if x.stride(-1) != 1:
        x = x.contiguous()
    if packed.stride(-1) != 1:
        packed = packed.contiguous()
    scale_in, scale_out = scale_in.contiguous(), scale_out.contiguous()
    if gates is not None:
        gates = gates.to(torch.float32).contiguous()
    if bias is not None:
        bias = bias.contiguous()
    return STRATEGIES[strategy](x, packed, in_features, scale_in, scale_out, gates, bias)
