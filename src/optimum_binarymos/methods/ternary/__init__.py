"""Ternary (1.58-bit) weights with TernaryLLM's Dual Learnable Ternarization: a scale and a shift per group.

* :mod:`.config`: :class:`TernaryConfig`, the ``quantization_config``.
* :mod:`.method`: the registered method (layers, initialization, packing, byte counts, dequantization).
* :mod:`.card`: what its model cards say.
* :mod:`.quantizer`: :class:`TernaryHfQuantizer`, registered with transformers as ``binarymos_ternary``.

The layers are :class:`~optimum_binarymos.nn.ternary.TernaryLinear` (latent) and
:class:`~optimum_binarymos.nn.ternary.PackedTernaryLinear`; the packed layouts are ``docs/FORMAT_TERNARY.md``'s.
"""

from .config import GROUP_SIZE_MULTIPLE, TERNARY_QUANT_METHOD, TernaryConfig
from .method import TERNARY, TERNARY_FORMAT_METADATA_KEY, TernaryMethod
from .quantizer import (
    TernaryHfQuantizer,
    TernaryInitialize,
    pack_ternary_state_dict,
    ternary_packed_state_dict,
)

__all__ = [
    "GROUP_SIZE_MULTIPLE",
    "TERNARY",
    "TERNARY_FORMAT_METADATA_KEY",
    "TERNARY_QUANT_METHOD",
    "TernaryConfig",
    "TernaryHfQuantizer",
    "TernaryInitialize",
    "TernaryMethod",
    "pack_ternary_state_dict",
    "ternary_packed_state_dict",
]
