"""Converting a float model object to BinaryMoS or ternary in place, and packing a trained one.

``from_pretrained(..., quantization_config=...)`` converts while loading; these work on a model already in memory.
Which modules are converted is :mod:`optimum_binarymos.replacement`'s job, how one layer is built its method's
(:mod:`optimum_binarymos.methods`).
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from .methods import method_for_config, method_for_model
from .methods.binarymos import BinaryMoSConfig
from .methods.config_base import MethodConfig
from .methods.embeddings import quantize_embeddings
from .methods.lifecycle import attach_quantizer, latent_from_float, skeleton_layer  # noqa: F401  re-exported
from .replacement import (  # noqa: F401  re-exported: their import path before the split
    ALWAYS_KEPT_IN_FLOAT,
    LATENT_LAYER_TYPES,
    PACKED_LAYER_TYPES,
    QUANTIZED_LAYER_TYPES,
    float_weight,
    linear_dims,
    modules_to_convert,
    replace_modules,
)

#: A quantization config of this package (any registered method's).
QuantizationConfig = MethodConfig


def method_name(config: MethodConfig) -> str:
    """Human-readable name of the method a config describes, for messages."""
    return method_for_config(config).name


def convert_model(model: nn.Module, quantization_config: QuantizationConfig | None = None) -> nn.Module:
    """Convert an already-loaded float model to the trainable form, in place, one layer at a time.

    ``from_pretrained(..., quantization_config=BinaryMoSConfig())`` (or ``TernaryConfig()``) is the usual route;
    this one is for a model object you already hold. The model then saves packed and trains like one converted
    on load.

    Returns:
        ``model``, with every converted layer a :class:`BinaryMoSLinear` (or a
        :class:`~optimum_binarymos.nn.ternary.TernaryLinear` under a ``TernaryConfig``), and with
        ``embedding_bits=8`` (or ``4``) its input embeddings and output head quantized
        (:class:`~optimum_binarymos.nn.int8.Int8Embedding`, :class:`~optimum_binarymos.nn.int8.Int8Linear`, or
        :class:`~optimum_binarymos.nn.int4.Int4Embedding`, :class:`~optimum_binarymos.nn.int4.Int4Linear`).
    """
    existing = method_for_model(model)
    if existing is not None:
        raise ValueError(
            f"{type(model).__name__} is already a {existing.name} model; convert_model takes a float model."
        )
    config = quantization_config or BinaryMoSConfig()
    try:
        method_for_config(config)
    except TypeError as error:
        raise TypeError(
            f"convert_model takes a BinaryMoSConfig or TernaryConfig, got {type(config).__name__}; for a dict, "
            "use BinaryMoSConfig.from_dict(...)"
        ) from error
    names = modules_to_convert(model, config.modules_to_not_convert)
    progress = tqdm(total=len(names), desc=f"Converting to {method_name(config)}", disable=len(names) < 64)

    def build(name: str, module: nn.Module) -> nn.Module:
        layer = latent_from_float(module, config)
        progress.update()
        return layer

    with torch.no_grad():
        replace_modules(model, names, build)
        if config.embedding_bits is not None:
            quantize_embeddings(model, config.embedding_bits)
    progress.close()
    attach_quantizer(model, config, pre_quantized=False)
    return model


def pack_model(model: nn.Module) -> nn.Module:
    """Turn every latent layer of ``model`` into its packed form, in place: :class:`BinaryMoSLinear` into
    :class:`PackedBinaryMoSLinear`, :class:`~optimum_binarymos.nn.ternary.TernaryLinear` into
    :class:`~optimum_binarymos.nn.ternary.PackedTernaryLinear` (with the code packing of the model's config).

    The packed model computes the same outputs with 1 bit per binarized weight (2 or 1.6 per ternary one); use
    it for inference after training without a save/load round trip. Returns ``model``.
    """
    method = method_for_model(model)
    if method is None:
        raise ValueError(
            f"{type(model).__name__} has no BinaryMoS or ternary layer to pack; convert it first."
        )
    names = [name for name, module in model.named_modules() if isinstance(module, method.latent_layer)]
    if not names:
        return model  # packed already
    quantizer = getattr(model, "hf_quantizer", None)
    config = getattr(quantizer, "quantization_config", None)

    def pack(_name: str, latent: nn.Module) -> nn.Module:
        packed = method.pack(latent, config)
        packed.source_is_conv1d = getattr(latent, "source_is_conv1d", False)
        return packed

    replace_modules(model, names, pack)
    if quantizer is not None:
        quantizer.pre_quantized = True
        quantizer.holds_packed_layers = True
        quantizer.quantization_config.checkpoint_form = "packed"
    return model
