"""Former home of ``BinaryMoSConfig``; kept importable for one release.

The config now lives in :mod:`optimum_binarymos.methods.binarymos.config` (``from optimum_binarymos import
BinaryMoSConfig`` is the stable spelling), the checks every method shares in
:mod:`optimum_binarymos.methods.config_base`.
"""

import warnings

from .methods.binarymos.config import DEFAULT_NUM_EXPERTS, MAX_SVID_ITERATIONS, QUANT_METHOD, BinaryMoSConfig
from .methods.config_base import (
    CHECKPOINT_FORMS,
    LOADING_HINT,
    SAVED_ONLY_KEYS,
    check_calibration_tokens,
    check_checkpoint_form,
    config_dict_without_calibration,
    module_name_list,
    newer_format_message,
)

warnings.warn(
    "optimum_binarymos.config is deprecated: import BinaryMoSConfig from optimum_binarymos (or "
    "optimum_binarymos.methods.binarymos).",
    FutureWarning,
    stacklevel=2,
)

__all__ = [
    "CHECKPOINT_FORMS",
    "DEFAULT_NUM_EXPERTS",
    "LOADING_HINT",
    "MAX_SVID_ITERATIONS",
    "QUANT_METHOD",
    "SAVED_ONLY_KEYS",
    "BinaryMoSConfig",
    "check_calibration_tokens",
    "check_checkpoint_form",
    "config_dict_without_calibration",
    "module_name_list",
    "newer_format_message",
]
