"""The transformers ``HfQuantizer`` for ternary (DLT) models: lifecycle hooks only.

* Float checkpoint + ``TernaryConfig``: decoder linears become latent :class:`TernaryLinear` skeletons on the meta
  device; each float weight becomes latent weight + TWN-initialized per-group scale and shift the moment it is
  read (:class:`TernaryInitialize`), so the float model never exists twice in memory.
* Packed checkpoint (``config.json`` says ``quant_method: ternary``): linears become :class:`PackedTernaryLinear`
  skeletons and the packed tensors fill them directly; no float weight is built.
* ``save_pretrained``: latent weights are ternarized and packed on the way out, with the config's
  ``code_packing``; inside :func:`optimum_binarymos.latent_saving` the latent weights are written instead.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.quantizers import register_quantizer

from .nn.ternary import PackedTernaryLinear, TernaryLinear, twn_init
from .packing import TERNARY_FORMAT_VERSION, pack_ternary, ternarize, unpack_ternary
from .quantizer import LatentInitialize, PackingHfQuantizer
from .ternary_config import TERNARY_QUANT_METHOD, TernaryConfig

#: safetensors metadata key carrying the packed ternary layout version.
TERNARY_FORMAT_METADATA_KEY = "ternary_format_version"


class TernaryInitialize(LatentInitialize):
    """Latent ternary layer from a float weight: TWN-initialized ``weight_scale`` and ``weight_shift``
    (``(out, ceil(in / group_size))``)."""

    def init_tensors(
        self, weight: torch.Tensor, layer: nn.Module, config: TernaryConfig
    ) -> dict[str, torch.Tensor]:
        scale, shift = twn_init(weight, config.group_size, config.init_threshold, config.shift_init)
        return {"weight_scale": scale.to(weight.dtype), "weight_shift": shift.to(weight.dtype)}


@register_quantizer(TERNARY_QUANT_METHOD)
class TernaryHfQuantizer(PackingHfQuantizer):
    """Converts float checkpoints to ternary DLT models on load, loads packed ones, packs on save."""

    quantization_config: TernaryConfig
    method_name = "ternary"
    latent_layer_type = TernaryLinear
    packed_layer_type = PackedTernaryLinear
    format_metadata_key = TERNARY_FORMAT_METADATA_KEY
    format_version = TERNARY_FORMAT_VERSION

    def get_quantize_ops(self) -> TernaryInitialize:
        return TernaryInitialize(self)

    def pack_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        return pack_ternary_state_dict(state, model, self.quantization_config.code_packing)

    def describe_config(self) -> str:
        config = self.quantization_config
        return f"group_size={config.group_size}, code_packing={config.code_packing!r}"


def pack_ternary_state_dict(
    state: dict[str, torch.Tensor], model: nn.Module, code_packing: str
) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with every latent ``<module>.weight`` of ``model`` replaced by its packed ``uint8``
    trits, ternarized from the weight, scale and shift in ``state`` (which may be gathered from shards).

    A layer already packed with another code packing is re-packed, so the file always matches ``code_packing``.
    """
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


def ternary_packed_state_dict(model: nn.Module, code_packing: str) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every latent ``<module>.weight`` replaced by its packed ``uint8`` trits."""
    return pack_ternary_state_dict(model.state_dict(), model, code_packing)
