"""Former home of the quantizers and their shared lifecycle; kept importable for one release.

The lifecycle every method shares is :mod:`optimum_binarymos.methods.lifecycle`; BinaryMoS's quantizer is
:mod:`optimum_binarymos.methods.binarymos.quantizer`. ``latent_saving`` and ``BinaryMoSHfQuantizer`` are exported
by ``optimum_binarymos`` itself.
"""

import warnings

from .methods.binarymos import (
    FORMAT_METADATA_KEY,
    BinaryMoSHfQuantizer,
    SvidInitialize,
    pack_binarymos_state_dict,
    packed_state_dict,
)
from .methods.lifecycle import (
    LatentInitialize,
    PackingHfQuantizer,
    attach_quantizer,
    check_checkpoint_format_version,
    check_one_model_per_folder,
    check_packed_checkpoint,
    latent_saving,
)

warnings.warn(
    "optimum_binarymos.quantizer is deprecated: import from optimum_binarymos.methods.lifecycle (the shared "
    "lifecycle) or optimum_binarymos.methods.binarymos.",
    FutureWarning,
    stacklevel=2,
)

__all__ = [
    "FORMAT_METADATA_KEY",
    "BinaryMoSHfQuantizer",
    "LatentInitialize",
    "PackingHfQuantizer",
    "SvidInitialize",
    "attach_quantizer",
    "check_checkpoint_format_version",
    "check_one_model_per_folder",
    "check_packed_checkpoint",
    "latent_saving",
    "pack_binarymos_state_dict",
    "packed_state_dict",
]
