"""The transformers ``HfQuantizer`` of ternary models: the shared lifecycle with this method (registered as
``binarymos_ternary``)."""

from __future__ import annotations

import torch
from torch import nn
from transformers.quantizers import register_quantizer

from ..lifecycle import LatentInitialize, PackingHfQuantizer
from .config import TERNARY_QUANT_METHOD, TernaryConfig
from .method import TERNARY

#: A float weight's conversion on load: TWN-initialized scale and shift; kept under its earlier name.
TernaryInitialize = LatentInitialize


@register_quantizer(TERNARY_QUANT_METHOD)
class TernaryHfQuantizer(PackingHfQuantizer):
    """Converts float checkpoints to ternary DLT models on load, loads packed ones, packs on save."""

    quantization_config: TernaryConfig
    method = TERNARY


def pack_ternary_state_dict(
    state: dict[str, torch.Tensor], model: nn.Module, code_packing: str
) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with every latent ``<module>.weight`` of ``model`` replaced by its packed ``uint8``
    trits in ``code_packing``."""
    return TERNARY.pack_state_dict(state, model, TernaryConfig(code_packing=code_packing))


def ternary_packed_state_dict(model: nn.Module, code_packing: str) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every latent ``<module>.weight`` replaced by its packed ``uint8`` trits."""
    return pack_ternary_state_dict(model.state_dict(), model, code_packing)
