"""Back to float: the dense weight each quantized layer computes with, and the float layer holding it.

Exact where the layer's weight is one fixed matrix: OneBit (BinaryMoS with one expert),
``W = s_out[:, None] * sign(W) * s_in[None, :]``, and ternary, ``W = alpha_g * T + gamma_g`` per group. With several
experts the scales are mixed per token by the router, so no single float matrix equals the layer: refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from .nn.binarymos import BinaryMoSLinear, PackedBinaryMoSLinear
from .nn.ternary import PackedTernaryLinear, TernaryLinear


@torch.no_grad()
def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The ``(out, in)`` float32 weight that ``layer`` multiplies its input by.

    Raises:
        ValueError: for a BinaryMoS layer with more than one expert (its weight depends on the token).
    """
    if isinstance(layer, (BinaryMoSLinear, PackedBinaryMoSLinear)):
        if layer.num_experts > 1:
            raise ValueError(
                f"A BinaryMoS layer with {layer.num_experts} scaling experts has no single float weight: its router "
                "mixes the scales per token, so the effective weight changes with every input. Only one-expert "
                "(OneBit) and ternary models dequantize exactly; keep this model quantized, or distill a "
                "num_experts=1 model if you need a float export."
            )
        signs = layer.signs(torch.float32)
        return layer.scale_out[0].float()[:, None] * signs * layer.scale_in[0].float()[None, :]
    if isinstance(layer, (TernaryLinear, PackedTernaryLinear)):
        trits = layer.trits().float()
        padding = layer.num_groups * layer.group_size - layer.in_features
        grouped = F.pad(trits, (0, padding)).view(layer.out_features, layer.num_groups, layer.group_size)
        values = grouped * layer.weight_scale.float()[..., None] + layer.weight_shift.float()[..., None]
        return values.flatten(1)[:, : layer.in_features]
    raise TypeError(f"{type(layer).__name__} is not a BinaryMoS or ternary layer")


def float_layer(layer: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """An ``nn.Linear`` (or a GPT-2 ``Conv1D``, for layers converted from one) computing what ``layer`` computes,
    in ``dtype`` (default: the layer's float dtype)."""
    weight = dense_weight(layer)
    bias = layer.bias
    dtype = dtype or layer.compute_dtype
    if getattr(layer, "source_is_conv1d", False):
        dense = Conv1D(layer.out_features, layer.in_features)
        dense.weight = nn.Parameter(weight.t().contiguous())
    else:
        dense = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None, device="meta")
        dense.weight = nn.Parameter(weight)
    if bias is not None:
        dense.bias = nn.Parameter(bias.detach().clone())
    return dense.to(device=weight.device, dtype=dtype)
