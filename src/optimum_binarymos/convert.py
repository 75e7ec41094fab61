"""Which modules of a model become quantized (BinaryMoS or ternary) layers, and swapping them in.

A module is converted when it is an ``nn.Linear`` or a GPT-2 style ``Conv1D`` that lives inside a repeated block
(an element of an ``nn.ModuleList``: the decoder layers) and no pattern of ``modules_to_not_convert`` matches it.
Embeddings, ``lm_head`` and norms are never inside that set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from .config import BinaryMoSConfig
from .nn.binarymos import BinaryMoSLinear, PackedBinaryMoSLinear
from .nn.ternary import PackedTernaryLinear, TernaryLinear
from .packing import CODE_PACKINGS
from .ternary_config import TernaryConfig

logger = logging.getLogger(__name__)

#: Modules that are never converted, whatever the user asks.
ALWAYS_KEPT_IN_FLOAT = ("lm_head",)

#: Trainable layers holding latent float weights, and the inference layers they pack into.
LATENT_LAYER_TYPES = (BinaryMoSLinear, TernaryLinear)
PACKED_LAYER_TYPES = (PackedBinaryMoSLinear, PackedTernaryLinear)
QUANTIZED_LAYER_TYPES = LATENT_LAYER_TYPES + PACKED_LAYER_TYPES

#: A quantization config of this package.
QuantizationConfig = BinaryMoSConfig | TernaryConfig


def method_name(config: QuantizationConfig) -> str:
    """Human-readable name of the method a config describes, for messages."""
    return "ternary" if isinstance(config, TernaryConfig) else "BinaryMoS"


def linear_dims(module: nn.Module) -> tuple[int, int, bool]:
    """``(in_features, out_features, has_bias)`` of an ``nn.Linear`` or a ``Conv1D`` (whose weight is ``(in, out)``)."""
    if isinstance(module, Conv1D):
        in_features, out_features = module.weight.shape
        return in_features, out_features, module.bias is not None
    return module.in_features, module.out_features, module.bias is not None


def float_weight(module: nn.Module) -> torch.Tensor:
    """The ``(out, in)`` weight of an ``nn.Linear`` or ``Conv1D`` (transposing the latter)."""
    return module.weight.t() if isinstance(module, Conv1D) else module.weight


def _matches(name: str, pattern: str) -> bool:
    """True when ``pattern``'s dotted components appear contiguously in ``name``'s components."""
    parts, wanted = name.split("."), pattern.split(".")
    return any(parts[i : i + len(wanted)] == wanted for i in range(len(parts) - len(wanted) + 1))


def _inside_repeated_block(model: nn.Module) -> set[str]:
    """Names of every module that sits below an element of an ``nn.ModuleList``."""
    inside: set[str] = set()
    for list_name, module in model.named_modules():
        if isinstance(module, nn.ModuleList):
            prefix = f"{list_name}." if list_name else ""
            for child_name, _ in module.named_modules():
                if child_name.count(".") >= 1:  # "<index>.<something>", not the block itself
                    inside.add(prefix + child_name)
    return inside


def modules_to_convert(model: nn.Module, modules_to_not_convert: Iterable[str] | None = None) -> list[str]:
    """Names of the modules of ``model`` that quantization converts (or has converted), in model order.

    Raises:
        ValueError: when nothing is left to convert.
    """
    skipped = list(ALWAYS_KEPT_IN_FLOAT) + list(modules_to_not_convert or [])
    inside = _inside_repeated_block(model)
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D, *QUANTIZED_LAYER_TYPES))
        and name in inside
        and not any(_matches(name, pattern) for pattern in skipped)
    ]
    _log_fused_experts(model, inside)
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no linear layer inside its decoder blocks left to quantize "
            f"(modules_to_not_convert={list(modules_to_not_convert or [])}). Check the model and that list."
        )
    return names


def _log_fused_experts(model: nn.Module, inside: set[str]) -> None:
    """Fused MoE experts are 3-D parameters, not linears: they stay in float. Say so once."""
    fused = [
        f"{module_name}.{param_name}"
        for module_name, module in model.named_modules()
        if module_name in inside
        for param_name, param in module.named_parameters(recurse=False)
        if param.ndim == 3
    ]
    if fused:
        logger.warning(
            "optimum-binarymos keeps %d fused MoE expert tensors in float (e.g. %s): only nn.Linear/Conv1D layers "
            "are quantized.",
            len(fused),
            fused[0],
        )


def replace_modules(
    model: nn.Module, names: Iterable[str], build: Callable[[str, nn.Module], nn.Module]
) -> None:
    """Replace each named submodule by ``build(name, old_module)``."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, build(name, getattr(parent, child)))


def skeleton_layer(
    module: nn.Module, config: QuantizationConfig, packed: bool, dtype: torch.dtype | None = None
) -> nn.Module:
    """An uninitialized layer of ``config``'s method shaped like ``module`` on ``module``'s device (meta while
    loading)."""
    in_features, out_features, has_bias = linear_dims(module)
    factory = {"device": module.weight.device, "dtype": dtype or module.weight.dtype}
    if isinstance(config, TernaryConfig):
        if packed:
            layer = PackedTernaryLinear(
                in_features, out_features, config.group_size, has_bias, config.code_packing, **factory
            )
        else:
            layer = TernaryLinear(in_features, out_features, config.group_size, has_bias, **factory)
    else:
        cls = PackedBinaryMoSLinear if packed else BinaryMoSLinear
        layer = cls(in_features, out_features, config.num_experts, has_bias, **factory)
    # Conv1D checkpoints store (in, out); the loader transposes them into the (out, in) latent weight.
    layer.source_is_conv1d = isinstance(module, Conv1D)
    return layer


def latent_from_float(module: nn.Module, config: QuantizationConfig) -> nn.Module:
    """The trainable layer of ``config``'s method initialized from a float ``nn.Linear`` or ``Conv1D``."""
    weight = float_weight(module).detach()
    if isinstance(config, TernaryConfig):
        return TernaryLinear.from_float(
            weight, module.bias, config.group_size, config.init_threshold, config.shift_init
        )
    return BinaryMoSLinear.from_float(weight, module.bias, config.num_experts, config.svid_iterations)


def convert_model(model: nn.Module, quantization_config: QuantizationConfig | None = None) -> nn.Module:
    """Convert an already-loaded float model to the trainable form, in place, one layer at a time.

    ``from_pretrained(..., quantization_config=BinaryMoSConfig())`` (or ``TernaryConfig()``) is the usual route;
    this one is for a model object you already hold. The model then saves packed and trains like one converted
    on load.

    Returns:
        ``model``, with every converted layer a :class:`BinaryMoSLinear` (or a
        :class:`~optimum_binarymos.nn.ternary.TernaryLinear` under a ``TernaryConfig``).
    """
    from .quantizer import attach_quantizer

    existing = next((m for m in model.modules() if isinstance(m, QUANTIZED_LAYER_TYPES)), None)
    if existing is not None:
        kind = "ternary" if isinstance(existing, (TernaryLinear, PackedTernaryLinear)) else "BinaryMoS"
        raise ValueError(
            f"{type(model).__name__} is already a {kind} model; convert_model takes a float model."
        )
    config = quantization_config or BinaryMoSConfig()
    if not isinstance(config, (BinaryMoSConfig, TernaryConfig)):
        raise TypeError(
            "convert_model takes a BinaryMoSConfig or TernaryConfig, got "
            f"{type(config).__name__}; for a dict, use BinaryMoSConfig.from_dict(...)"
        )
    names = modules_to_convert(model, config.modules_to_not_convert)
    progress = tqdm(total=len(names), desc=f"Converting to {method_name(config)}", disable=len(names) < 64)

    def build(name: str, module: nn.Module) -> nn.Module:
        layer = latent_from_float(module, config)
        progress.update()
        return layer

    with torch.no_grad():
        replace_modules(model, names, build)
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
    names = [name for name, module in model.named_modules() if isinstance(module, LATENT_LAYER_TYPES)]
    if not names:
        if any(isinstance(module, PACKED_LAYER_TYPES) for module in model.modules()):
            return model
        raise ValueError(
            f"{type(model).__name__} has no BinaryMoS or ternary layer to pack; convert it first."
        )
    quantizer = getattr(model, "hf_quantizer", None)
    config = getattr(quantizer, "quantization_config", None)
    code_packing = config.code_packing if isinstance(config, TernaryConfig) else CODE_PACKINGS[0]

    def pack(_name: str, latent: nn.Module) -> nn.Module:
        if isinstance(latent, TernaryLinear):
            return PackedTernaryLinear.from_latent(latent, code_packing)
        return PackedBinaryMoSLinear.from_latent(latent)

    replace_modules(model, names, pack)
    if quantizer is not None:
        quantizer.pre_quantized = True
        quantizer.holds_packed_layers = True
        quantizer.quantization_config.checkpoint_form = "packed"
    return model
