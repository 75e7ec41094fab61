"""BinaryMoS (OneBit with one expert) as a registered method: its layers, initialization, packing and byte counts.

The packed layout (signs, 8 per byte, rows padded to whole bytes) is :mod:`optimum_binarymos.packing`'s and
``docs/FORMAT.md``'s.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...nn.binarymos import BinaryMoSLinear, PackedBinaryMoSLinear
from ...nn.svid import svid_rank1
from ...packing import FORMAT_VERSION, pack_signs, packed_columns
from ..registry import QuantizationMethod, register_method
from . import card
from .config import QUANT_METHOD, BinaryMoSConfig

#: safetensors metadata key carrying the packed layout version.
FORMAT_METADATA_KEY = "binarymos_format_version"


class BinaryMoSMethod(QuantizationMethod):
    """``y = ((x * s_in) @ sign(W)^T) * s_out + bias``, the scales mixed per token from ``num_experts`` experts."""

    name = "BinaryMoS"
    cli_name = "binarymos"
    quant_method = QUANT_METHOD
    config_class = BinaryMoSConfig
    latent_layer = BinaryMoSLinear
    packed_layer = PackedBinaryMoSLinear
    format_metadata_key = FORMAT_METADATA_KEY
    format_version = FORMAT_VERSION

    card = card

    def describe(self, config: BinaryMoSConfig) -> str:
        return f"num_experts={config.num_experts}"

    def skeleton(self, in_features, out_features, bias, config: BinaryMoSConfig, packed, **factory) -> nn.Module:
        layer_class = PackedBinaryMoSLinear if packed else BinaryMoSLinear
        return layer_class(in_features, out_features, config.num_experts, bias, **factory)

    def from_float(self, weight, bias, config: BinaryMoSConfig) -> nn.Module:
        return BinaryMoSLinear.from_float(weight, bias, config.num_experts, config.svid_iterations)

    def init_tensors(self, weight, layer, config: BinaryMoSConfig) -> dict[str, torch.Tensor]:
        """``scale_in`` and ``scale_out`` from the rank-1 SVID of the weight, copied to every expert, and, with
        several experts, a randomly initialized ``router_weight``."""
        out_scale, in_scale = svid_rank1(weight, config.svid_iterations)
        experts = config.num_experts
        tensors = {
            "scale_in": in_scale.to(weight.dtype).expand(experts, -1).contiguous(),
            "scale_out": out_scale.to(weight.dtype).expand(experts, -1).contiguous(),
        }
        if experts > 1:
            router = torch.empty(experts, layer.in_features, dtype=weight.dtype, device=weight.device)
            nn.init.kaiming_uniform_(router, a=5**0.5)  # nn.Linear's default: random, never zero
            tensors["router_weight"] = router
        return tensors

    def pack(self, latent: BinaryMoSLinear, config: Any) -> nn.Module:
        return PackedBinaryMoSLinear.from_latent(latent)

    def pack_state_dict(self, state, model, config) -> dict[str, torch.Tensor]:
        """Every latent ``<module>.weight`` becomes its packed ``uint8`` signs (names missing from ``state`` are
        left out, as a partial gathered state dict would)."""
        packed = dict(state)
        for name, module in model.named_modules():
            key = f"{name}.weight"
            if isinstance(module, BinaryMoSLinear) and key in packed:
                packed[key] = pack_signs(packed[key])
        return packed

    def dense_weight(self, layer) -> torch.Tensor:
        """OneBit only: ``W = s_out[:, None] * sign(W) * s_in[None, :]``."""
        if layer.num_experts > 1:
            raise ValueError(
                f"A BinaryMoS layer with {layer.num_experts} scaling experts has no single float weight: its router "
                "mixes the scales per token, so the effective weight changes with every input. Only one-expert "
                "(OneBit) and ternary models dequantize exactly; keep this model quantized, or distill a "
                "num_experts=1 model if you need a float export."
            )
        signs = layer.signs(torch.float32)
        return layer.scale_out[0].float()[:, None] * signs * layer.scale_in[0].float()[None, :]

    def footprint_details(self, config: BinaryMoSConfig, first_layer: nn.Module) -> dict[str, Any]:
        num_experts = getattr(first_layer, "num_experts", None) or config.num_experts
        return {"num_experts": num_experts, "method": QUANT_METHOD}

    def layer_bytes(self, layer, in_features, out_features, details, float_bytes) -> int:
        """Packed signs ``(out, ceil(in / 8))`` + scales ``(E, in) + (E, out)`` + router ``(E, in)`` if ``E > 1``."""
        experts = getattr(layer, "num_experts", details["num_experts"])
        router = experts * in_features if experts > 1 else 0
        scales = experts * (in_features + out_features)
        return out_features * packed_columns(in_features) + (scales + router) * float_bytes

    def footprint_label(self, footprint) -> str:
        return f"BinaryMoS (E={footprint.num_experts})"


BINARYMOS = register_method(BinaryMoSMethod())
