"""The quantization methods of this package, one sub-package each, and the registry that generic code reads.

* :mod:`.binarymos`: BinaryMoS (OneBit with one expert); :mod:`.ternary`: TernaryLLM's ternary weights.
* :mod:`.registry`: :class:`QuantizationMethod` (what a method provides) and the lookups by config, layer,
  ``quant_method`` or model.
* :mod:`.config_base`: the fields and checks every method's config shares.
* :mod:`.lifecycle`: the transformers ``HfQuantizer`` lifecycle every method's quantizer shares.

Importing this package registers both methods (with this registry and with transformers).
"""

from . import binarymos, ternary  # noqa: F401  each registers itself
from .registry import (
    QuantizationMethod,
    method_for_config,
    method_for_layer,
    method_for_model,
    method_for_quant_method,
    quantized_layer_types,
    quantized_layers,
    register_method,
    registered_methods,
)

__all__ = [
    "QuantizationMethod",
    "method_for_config",
    "method_for_layer",
    "method_for_model",
    "method_for_quant_method",
    "quantized_layer_types",
    "quantized_layers",
    "register_method",
    "registered_methods",
]
