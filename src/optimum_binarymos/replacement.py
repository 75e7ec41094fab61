"""Which modules of a model become quantized layers, and swapping modules in: helpers of every method.

Building one method's layers is the method's job (:mod:`optimum_binarymos.methods`); this module knows nothing of
configs.

A module is converted when it is an ``nn.Linear`` or a GPT-2 style ``Conv1D`` that lives inside a repeated block
(an element of an ``nn.ModuleList``: the decoder layers) and no pattern of ``modules_to_not_convert`` matches it.
Embeddings, ``lm_head`` and norms are never inside that set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .nn.binarymos import BinaryMoSLinear, PackedBinaryMoSLinear
from .nn.ternary import PackedTernaryLinear, TernaryLinear

logger = logging.getLogger(__name__)

#: Modules that are never converted, whatever the user asks.
ALWAYS_KEPT_IN_FLOAT = ("lm_head",)

#: Trainable layers holding latent float weights, and the inference layers they pack into (the layers of the
#: registered methods; code above the methods asks :mod:`optimum_binarymos.methods.registry` instead).
LATENT_LAYER_TYPES = (BinaryMoSLinear, TernaryLinear)
PACKED_LAYER_TYPES = (PackedBinaryMoSLinear, PackedTernaryLinear)
QUANTIZED_LAYER_TYPES = LATENT_LAYER_TYPES + PACKED_LAYER_TYPES

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
