"""optimum-binarymos: 1-bit BinaryMoS (and 1.58-bit ternary) quantization for Hugging Face causal LMs.

Importing the package registers the ``"binarymos"`` and ``"binarymos_ternary"`` quantization methods with
transformers, so that ``AutoModelForCausalLM.from_pretrained(..., quantization_config=BinaryMoSConfig())``
converts a float checkpoint and ``from_pretrained`` of a saved folder loads the packed model.
"""

from .calibration import CalibrationReport, calibrate_model
from .convert import convert_model, modules_to_convert, pack_model
from .footprint import Footprint, estimate_footprint, model_footprint
from .hub import push_to_hub, record_base_model, record_evaluation, render_model_card, save_pretrained
from .integrations import attention as _attention  # noqa: F401  registers attn_implementation="binarymos_sdpa"
from .integrations import register_peft  # noqa: F401  deprecated, kept importable for one release
from .methods.binarymos import BinaryMoSConfig, BinaryMoSHfQuantizer
from .methods.lifecycle import latent_saving
from .methods.ternary import TernaryConfig, TernaryHfQuantizer
from .nn import BinaryMoSLinear, PackedBinaryMoSLinear, PackedTernaryLinear, TernaryLinear
from .packing import (
    FORMAT_VERSION,
    TERNARY_FORMAT_VERSION,
    pack_signs,
    pack_ternary,
    unpack_signs,
    unpack_ternary,
)

__version__ = "0.1.0"

# The distillation classes pull in transformers.Trainer: imported on first use only.
_LAZY = {"DistillationConfig": "optimum_binarymos.distill", "DistillationTrainer": "optimum_binarymos.distill"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "FORMAT_VERSION",
    "TERNARY_FORMAT_VERSION",
    "BinaryMoSConfig",
    "BinaryMoSHfQuantizer",
    "BinaryMoSLinear",
    "CalibrationReport",
    "DistillationConfig",
    "DistillationTrainer",
    "Footprint",
    "PackedBinaryMoSLinear",
    "PackedTernaryLinear",
    "TernaryConfig",
    "TernaryHfQuantizer",
    "TernaryLinear",
    "calibrate_model",
    "convert_model",
    "estimate_footprint",
    "latent_saving",
    "model_footprint",
    "modules_to_convert",
    "pack_model",
    "pack_signs",
    "pack_ternary",
    "push_to_hub",
    "record_base_model",
    "record_evaluation",
    "render_model_card",
    "save_pretrained",
    "unpack_signs",
    "unpack_ternary",
]
