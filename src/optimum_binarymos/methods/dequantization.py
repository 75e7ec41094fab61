"""Back to float: the dense weight a quantized layer computes with, and the float layer holding it.

Exact where the layer's weight is one fixed matrix (each method's
:meth:`~optimum_binarymos.methods.registry.QuantizationMethod.dense_weight` says how): OneBit (BinaryMoS with one
expert) and ternary. With several experts the router mixes the scales per token, so no single float matrix equals
the layer: refused.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .registry import method_for_layer


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The ``(out, in)`` float32 weight that a latent or packed ``layer`` of any method multiplies its input by.

    Raises:
        ValueError: for a BinaryMoS layer with more than one expert (its weight depends on the token).
        TypeError: for a module that is no method's layer.
    """
    method = method_for_layer(layer)
    if method is None:
        raise TypeError(f"{type(layer).__name__} is not a BinaryMoS or ternary layer")
    with torch.no_grad():
        return method.dense_weight(layer)


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
