"""BinaryMoS, 1 bit per weight with token-adaptive scales mixed from a few experts (one expert: OneBit).

* :mod:`.config`: :class:`BinaryMoSConfig`, the ``quantization_config``.
* :mod:`.method`: the registered method (layers, initialization, packing, byte counts, dequantization).
* :mod:`.card`: what its model cards say.
* :mod:`.quantizer`: :class:`BinaryMoSHfQuantizer`, registered with transformers as ``binarymos``.

The layers are :class:`~optimum_binarymos.nn.binarymos.BinaryMoSLinear` (latent) and
:class:`~optimum_binarymos.nn.binarymos.PackedBinaryMoSLinear`; the packed layout is ``docs/FORMAT.md``'s.
"""

from .config import DEFAULT_NUM_EXPERTS, MAX_SVID_ITERATIONS, QUANT_METHOD, BinaryMoSConfig
from .method import BINARYMOS, FORMAT_METADATA_KEY, BinaryMoSMethod
from .quantizer import BinaryMoSHfQuantizer, SvidInitialize, pack_binarymos_state_dict, packed_state_dict

__all__ = [
    "BINARYMOS",
    "DEFAULT_NUM_EXPERTS",
    "FORMAT_METADATA_KEY",
    "MAX_SVID_ITERATIONS",
    "QUANT_METHOD",
    "BinaryMoSConfig",
    "BinaryMoSHfQuantizer",
    "BinaryMoSMethod",
    "SvidInitialize",
    "pack_binarymos_state_dict",
    "packed_state_dict",
]
