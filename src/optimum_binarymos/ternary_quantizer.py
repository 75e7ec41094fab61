"""Former home of ``TernaryHfQuantizer``; kept importable for one release.

It now lives in :mod:`optimum_binarymos.methods.ternary.quantizer` (``from optimum_binarymos import
TernaryHfQuantizer`` is the stable spelling).
"""

import warnings

from .methods.ternary import (
    TERNARY_FORMAT_METADATA_KEY,
    TernaryHfQuantizer,
    TernaryInitialize,
    pack_ternary_state_dict,
    ternary_packed_state_dict,
)

warnings.warn(
    "optimum_binarymos.ternary_quantizer is deprecated: import from optimum_binarymos.methods.ternary.",
    FutureWarning,
    stacklevel=2,
)

__all__ = [
    "TERNARY_FORMAT_METADATA_KEY",
    "TernaryHfQuantizer",
    "TernaryInitialize",
    "pack_ternary_state_dict",
    "ternary_packed_state_dict",
]
