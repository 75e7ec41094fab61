"""Ternary (TernaryLLM's DLT) as a registered method: its layers, initialization, packing and byte counts.

The packed layouts (2-bit and base-3 codes) are :mod:`optimum_binarymos.packing`'s and ``docs/FORMAT_TERNARY.md``'s.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...nn.ternary import PackedTernaryLinear, TernaryLinear, twn_init
from ...packing import (
    CODE_PACKINGS,
    TERNARY_FORMAT_VERSION,
    pack_ternary,
    ternarize,
    ternary_groups,
    ternary_packed_columns,
    unpack_ternary,
)
from ..registry import QuantizationMethod, register_method
from . import card
from .config import TERNARY_QUANT_METHOD, TernaryConfig

#: safetensors metadata key carrying the packed ternary layout version.
TERNARY_FORMAT_METADATA_KEY = "ternary_format_version"


class TernaryMethod(QuantizationMethod):
    """``W_q = alpha_g * T + gamma_g``: trits with a learnable scale and shift per group of input columns."""

    name = "ternary"
    cli_name = "ternary"
    quant_method = TERNARY_QUANT_METHOD
    config_class = TernaryConfig
    latent_layer = TernaryLinear
    packed_layer = PackedTernaryLinear
    format_metadata_key = TERNARY_FORMAT_METADATA_KEY
    format_version = TERNARY_FORMAT_VERSION

    card = card

    def describe(self, config: TernaryConfig) -> str:
        return f"group_size={config.group_size}, code_packing={config.code_packing!r}"

    def skeleton(self, in_features, out_features, bias, config: TernaryConfig, packed, **factory) -> nn.Module:
        if packed:
            return PackedTernaryLinear(
                in_features, out_features, config.group_size, bias, config.code_packing, **factory
            )
        return TernaryLinear(in_features, out_features, config.group_size, bias, **factory)

    def from_float(self, weight, bias, config: TernaryConfig) -> nn.Module:
        return TernaryLinear.from_float(weight, bias, config.group_size, config.init_threshold, config.shift_init)

    def init_tensors(self, weight, layer, config: TernaryConfig) -> dict[str, torch.Tensor]:
        """TWN-initialized ``weight_scale`` and ``weight_shift`` (``(out, ceil(in / group_size))``)."""
        scale, shift = twn_init(weight, config.group_size, config.init_threshold, config.shift_init)
        return {"weight_scale": scale.to(weight.dtype), "weight_shift": shift.to(weight.dtype)}

    def pack(self, latent: TernaryLinear, config: Any) -> nn.Module:
        return PackedTernaryLinear.from_latent(latent, _code_packing(config))

    def pack_state_dict(self, state, model, config) -> dict[str, torch.Tensor]:
        """Every latent ``<module>.weight`` becomes packed ``uint8`` trits, ternarized from the weight, scale and
        shift in ``state``; a layer packed with another code packing is re-packed, so the file always matches
        the config's."""
        code_packing = _code_packing(config)
        packed = dict(state)
        for name, module in model.named_modules():
            key = f"{name}.weight"
            if key not in packed:
                continue
            if isinstance(module, TernaryLinear):
                trits = ternarize(
                    packed[key], packed[f"{name}.weight_scale"], packed[f"{name}.weight_shift"], module.group_size
                )
            elif isinstance(module, PackedTernaryLinear) and module.code_packing != code_packing:
                trits = unpack_ternary(packed[key], module.in_features, module.code_packing)
            else:
                continue
            packed[key] = pack_ternary(trits, code_packing)
        return packed

    def dense_weight(self, layer) -> torch.Tensor:
        """``W = alpha_g * T + gamma_g`` per group of input columns."""
        trits = layer.trits().float()
        padding = layer.num_groups * layer.group_size - layer.in_features
        grouped = F.pad(trits, (0, padding)).view(layer.out_features, layer.num_groups, layer.group_size)
        values = grouped * layer.weight_scale.float()[..., None] + layer.weight_shift.float()[..., None]
        return values.flatten(1)[:, : layer.in_features]

    def footprint_details(self, config: Any, first_layer: nn.Module) -> dict[str, Any]:
        group_size = getattr(first_layer, "group_size", None) or config.group_size
        # The code packing a model saves with: its config's (save_pretrained re-packs to it), else the packed
        # layers' own, else the default.
        if isinstance(config, TernaryConfig):
            code_packing = config.code_packing
        else:
            code_packing = getattr(first_layer, "code_packing", CODE_PACKINGS[0])
        return {"num_experts": None, "method": TERNARY_QUANT_METHOD, "group_size": group_size, "code_packing": code_packing}

    def layer_bytes(self, layer, in_features, out_features, details, float_bytes) -> int:
        """Packed codes ``(out, ceil(in / P))`` + scale and shift ``(out, ceil(in / group_size))`` each."""
        groups = ternary_groups(in_features, getattr(layer, "group_size", details["group_size"]))
        codes = out_features * ternary_packed_columns(in_features, details["code_packing"])
        return codes + 2 * out_features * groups * float_bytes

    def footprint_label(self, footprint) -> str:
        return f"ternary ({footprint.code_packing} codes, group {footprint.group_size})"


def _code_packing(config: Any) -> str:
    return config.code_packing if isinstance(config, TernaryConfig) else CODE_PACKINGS[0]


TERNARY = register_method(TernaryMethod())
