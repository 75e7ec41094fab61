"""optimum-binarymos: 1-bit BinaryMoS quantization for Hugging Face causal language models.

Importing the package registers the ``"binarymos"`` quantization method with transformers, so that
``AutoModelForCausalLM.from_pretrained(..., quantization_config=BinaryMoSConfig())`` converts a float checkpoint
and ``from_pretrained`` of a saved BinaryMoS folder loads the packed model.
"""

from .config import BinaryMoSConfig
from .convert import convert_model, modules_to_convert, pack_model
from .nn import BinaryMoSLinear, PackedBinaryMoSLinear
from .packing import FORMAT_VERSION, pack_signs, unpack_signs
from .quantizer import BinaryMoSHfQuantizer, latent_saving

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "BinaryMoSConfig",
    "BinaryMoSHfQuantizer",
    "BinaryMoSLinear",
    "PackedBinaryMoSLinear",
    "convert_model",
    "latent_saving",
    "modules_to_convert",
    "pack_model",
    "pack_signs",
    "unpack_signs",
]
