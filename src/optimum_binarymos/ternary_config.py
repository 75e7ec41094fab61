"""Former home of ``TernaryConfig``; kept importable for one release.

The config now lives in :mod:`optimum_binarymos.methods.ternary.config` (``from optimum_binarymos import
TernaryConfig`` is the stable spelling).
"""

import warnings

from .methods.config_base import CHECKPOINT_FORMS
from .methods.ternary.config import GROUP_SIZE_MULTIPLE, TERNARY_QUANT_METHOD, TernaryConfig

warnings.warn(
    "optimum_binarymos.ternary_config is deprecated: import TernaryConfig from optimum_binarymos (or "
    "optimum_binarymos.methods.ternary).",
    FutureWarning,
    stacklevel=2,
)

__all__ = ["CHECKPOINT_FORMS", "GROUP_SIZE_MULTIPLE", "TERNARY_QUANT_METHOD", "TernaryConfig"]
