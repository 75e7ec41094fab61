"""The transformers ``HfQuantizer`` of BinaryMoS: the shared lifecycle with this method (registered as
``binarymos``)."""

from __future__ import annotations

import torch
from torch import nn
from transformers.quantizers import register_quantizer

from ..lifecycle import LatentInitialize, PackingHfQuantizer
from .config import QUANT_METHOD, BinaryMoSConfig
from .method import BINARYMOS

#: A float weight's conversion on load: SVID scales (and a random router); kept under its earlier name.
SvidInitialize = LatentInitialize


@register_quantizer(QUANT_METHOD)
class BinaryMoSHfQuantizer(PackingHfQuantizer):
    """Converts float checkpoints to BinaryMoS on load, loads packed ones, packs on save."""

    quantization_config: BinaryMoSConfig
    method = BINARYMOS


def pack_binarymos_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with every latent ``<module>.weight`` of ``model`` replaced by its packed ``uint8``
    signs."""
    return BINARYMOS.pack_state_dict(state, model, None)


def packed_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every latent ``<module>.weight`` replaced by its packed ``uint8`` signs."""
    return pack_binarymos_state_dict(model.state_dict(), model)
