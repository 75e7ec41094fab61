"""BinaryMoS layers: latent (trainable) and packed (inference) forms."""

from .binarymos import BinaryMoSLinear, PackedBinaryMoSLinear
from .ste import binarize_ste
from .svid import svid_rank1

__all__ = ["BinaryMoSLinear", "PackedBinaryMoSLinear", "binarize_ste", "svid_rank1"]
