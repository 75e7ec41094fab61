"""Quantized layers: BinaryMoS and ternary (DLT), each in a latent (trainable) and a packed (inference) form."""

from .binarymos import BinaryMoSLinear, PackedBinaryMoSLinear
from .ste import binarize_ste
from .svid import svid_rank1
from .ternary import PackedTernaryLinear, TernaryLinear, ternarize_ste, twn_init

__all__ = [
    "BinaryMoSLinear",
    "PackedBinaryMoSLinear",
    "PackedTernaryLinear",
    "TernaryLinear",
    "binarize_ste",
    "svid_rank1",
    "ternarize_ste",
    "twn_init",
]
