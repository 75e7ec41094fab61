"""LoRA on BinaryMoS (and ternary) layers with plain peft: QLoRA-style fine-tuning of a 1-bit model.

peft's LoRA knows ``nn.Linear`` and friends, not quantized layers. Its documented way to add a layer type is the
custom-module mapping of a ``LoraConfig``; :func:`register_lora_layers` fills it so that every layer listed in
:data:`SUPPORTED_BASE_LAYERS` is wrapped in :class:`BinaryMoSLoraLinear`::

    y = base(x) + lora_B(lora_A(dropout(x))) * scaling        # base frozen: packed bits, scales, router

The mapping lives on the config and is not saved in ``adapter_config.json``, so every config passes through
:func:`register_lora_layers` (or is built by :func:`lora_config`), and :func:`load_lora_adapter` reloads an adapter
folder that way::

    from peft import get_peft_model

    model = get_peft_model(model, lora_config(model, r=16, lora_alpha=32))  # targets every quantized layer
    model.save_pretrained("adapter")                                         # LoRA weights only
    tuned = load_lora_adapter(base_model, "adapter")                         # a PeftModel

Merging is refused: these layers keep only quantized weight values (1-bit signs, or trits) under their scales, so a
float low-rank update cannot be folded into them. Adapters of such a config on float layers (``embed_tokens``,
``lm_head``) refuse too, so that a refused merge never leaves a half-merged model. Run the adapter unmerged.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from peft import PeftModel
from peft.tuners.lora import LoraConfig
from peft.tuners.lora.layer import Embedding as LoraEmbedding
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from ..nn.binarymos import BinaryMoSLinear, PackedBinaryMoSLinear
from ..nn.ternary import PackedTernaryLinear, TernaryLinear

logger = logging.getLogger(__name__)

__all__ = [
    "SUPPORTED_BASE_LAYERS",
    "BinaryMoSLoraLinear",
    "load_lora_adapter",
    "lora_config",
    "lora_target_modules",
    "register_lora_layers",
]

#: Quantized layers that LoRA may wrap. Each exposes ``in_features``, ``out_features`` and a float
#: ``compute_dtype`` (peft reads it to pick the adapter's dtype), and computes ``(..., in) -> (..., out)`` with a
#: gradient for its input even when frozen (adapters in earlier layers train through it).
SUPPORTED_BASE_LAYERS: tuple[type[nn.Module], ...] = (
    BinaryMoSLinear,
    PackedBinaryMoSLinear,
    TernaryLinear,
    PackedTernaryLinear,
)

#: ``init_lora_weights`` values that do not read the base layer's dense float weight (which these layers lack).
SUPPORTED_INITS = (True, False, "gaussian")


class BinaryMoSLoraLinear(LoraLinear):
    """peft's LoRA linear over a frozen BinaryMoS or ternary layer (``base_layer``); only ``lora_A``/``lora_B``
    train.

    Inherits forward, adapter switching, mixed-adapter batches and saving from ``peft.tuners.lora.Linear``.
    Differs where a dense float weight would be needed: merging raises, and only plain LoRA (no DoRA or other
    variant) with a weight-free initialization (``init_lora_weights`` in :data:`SUPPORTED_INITS`) is accepted.
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, **kwargs) -> None:
        super().__init__(base_layer, adapter_name, config=config, **kwargs)
        # BinaryMoS layers are (out, in) like nn.Linear whatever the source (GPT-2's Conv1D is transposed on
        # conversion); peft's fan_in_fan_out, set for GPT-2 out of habit, would only matter for merging anyway.
        self.fan_in_fan_out = False

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        # peft's generic lookup reads the same attributes but warns "Unsupported layer type" for any class it
        # does not know; these layers are supported.
        return module.in_features, module.out_features

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: LoraConfig, **kwargs) -> None:
        init = config.init_lora_weights
        if not any(init is allowed or init == allowed for allowed in SUPPORTED_INITS):
            raise ValueError(
                f"init_lora_weights={init!r} is not supported on {type(self.get_base_layer()).__name__}: it "
                "derives the adapter from a dense float base weight, which a quantized layer does not store. "
                f"Use one of {list(SUPPORTED_INITS)}."
            )
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs):
        variant = super().resolve_lora_variant(config=config, **kwargs)
        if variant is not None:
            raise ValueError(
                f"{type(variant).__name__} is not supported on {type(self.get_base_layer()).__name__}: quantized "
                "layers take plain LoRA only (DoRA and the other variants need a dense float base weight; a "
                "BinaryMoS layer's effective weight even changes with every token). Drop use_dora and the "
                "variant options from the LoraConfig."
            )
        return None

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if adapter_names:
            raise ValueError(merge_refusal(self.get_base_layer(), adapter_names))

    def __repr__(self) -> str:
        return "binarymos." + super().__repr__()


def merge_refusal(base_layer: nn.Module, adapter_names: list[str]) -> str:
    """The message explaining why LoRA adapters cannot be merged into ``base_layer``."""
    why = (
        "the layer stores only quantized weight values (1-bit signs for BinaryMoS, whose scales change with every "
        "token; trits for ternary) and a float low-rank update B @ A cannot be folded into them (re-quantizing "
        "W + B @ A would throw most of the adapter away)"
    )
    if not isinstance(base_layer, SUPPORTED_BASE_LAYERS):
        why = (
            "the adapter belongs to a BinaryMoS or ternary model, whose quantized layers cannot absorb a float "
            "low-rank update, so no layer of it merges (a partial merge would leave a model that counts some "
            "updates twice)"
        )
    return (
        f"Cannot merge LoRA adapter(s) {adapter_names} into {type(base_layer).__name__}: {why}. Keep the adapter "
        "unmerged: the PeftModel runs as it is, saves the adapter with save_pretrained(), and unload() returns the "
        "base model without it."
    )


def lora_target_modules(model: nn.Module) -> list[str]:
    """Sorted leaf names of ``model``'s BinaryMoS (and ternary) layers, e.g. ``["down_proj", "gate_proj", ...]``.

    Pass them as ``LoraConfig(target_modules=...)``. peft's ``target_modules="all-linear"`` selects
    ``nn.Linear`` modules only, so on a BinaryMoS model it finds none of the binarized layers.
    Works on a model that already carries adapters too.
    """
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, SUPPORTED_BASE_LAYERS):
            parts = name.split(".")
            if parts[-1] == "base_layer":  # inside a LoRA wrapper: the target is the wrapper's name
                parts = parts[:-1]
            names.add(parts[-1])
    if not names:
        raise ValueError(f"{type(model).__name__} has no BinaryMoS layer for LoRA to target.")
    return sorted(names)


class MergeRefusingLoraLinear(LoraLinear):
    """peft's LoRA linear on a float ``nn.Linear`` of a quantized model: everything as peft's, but merging raises,
    so that merging the model's adapters fails before anything is folded in."""

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if adapter_names:
            raise ValueError(merge_refusal(self.get_base_layer(), adapter_names))


class MergeRefusingLoraEmbedding(LoraEmbedding):
    """peft's LoRA embedding on a quantized model's float embedding; merging raises (see
    :class:`MergeRefusingLoraLinear`)."""

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if adapter_names:
            raise ValueError(merge_refusal(self.get_base_layer(), adapter_names))


#: The custom-module mapping :func:`register_lora_layers` gives a ``LoraConfig``. More specific types first: peft
#: takes the first entry the target is an instance of.
LORA_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    **dict.fromkeys(SUPPORTED_BASE_LAYERS, BinaryMoSLoraLinear),
    nn.Embedding: MergeRefusingLoraEmbedding,
    nn.Linear: MergeRefusingLoraLinear,
}


def register_lora_layers(config: LoraConfig | None = None) -> LoraConfig:
    """Teach ``config`` (a peft ``LoraConfig``) to wrap BinaryMoS and ternary layers; returns ``config``.

    Uses peft's custom-module mapping (``LoraConfig._register_custom_module``, peft's documented way to add layer
    types). The mapping is not saved with the adapter: pass every config you build or load through this (or use
    :func:`lora_config` and :func:`load_lora_adapter`). Types the user already mapped to their own LoRA layers keep
    their mapping.

    Example::

        config = register_lora_layers(LoraConfig(r=8, target_modules=lora_target_modules(model)))
        model.add_adapter(config)                       # or peft.get_peft_model(model, config)
    """
    if config is None:
        raise TypeError(
            "register_lora_layers(config) takes the LoraConfig to extend: peft's own custom-module mapping is "
            "kept per config. Build the config with optimum_binarymos.integrations.peft.lora_config(model, ...) "
            "or pass it through register_lora_layers(LoraConfig(...))."
        )
    if not isinstance(config, LoraConfig):
        raise TypeError(f"register_lora_layers takes a peft LoraConfig, got {type(config).__name__}")
    _warn_on_version_conflict()
    already = config._custom_modules or {}
    config._register_custom_module({base: lora for base, lora in LORA_LAYERS.items() if base not in already})
    return config


def lora_config(model: nn.Module, **kwargs: Any) -> LoraConfig:
    """A ``LoraConfig(**kwargs)`` for ``model``, registered with :func:`register_lora_layers`; its
    ``target_modules`` default to every quantized layer (:func:`lora_target_modules`) and ``task_type`` to
    ``"CAUSAL_LM"``."""
    kwargs.setdefault("target_modules", lora_target_modules(model))
    kwargs.setdefault("task_type", "CAUSAL_LM")
    return register_lora_layers(LoraConfig(**kwargs))


def load_lora_adapter(
    model: nn.Module, adapter: str | os.PathLike[str], is_trainable: bool = False, **kwargs: Any
) -> PeftModel:
    """``PeftModel.from_pretrained(model, adapter, ...)`` with the adapter's config passed through
    :func:`register_lora_layers` (an ``adapter_config.json`` carries no custom-module mapping). ``kwargs`` go to
    both ``LoraConfig.from_pretrained`` (Hub arguments such as ``revision``) and ``PeftModel.from_pretrained``."""
    config = register_lora_layers(LoraConfig.from_pretrained(os.fspath(adapter), **kwargs))
    return PeftModel.from_pretrained(model, os.fspath(adapter), is_trainable=is_trainable, config=config, **kwargs)


def _warn_on_version_conflict() -> None:
    from . import adapter_version_conflict

    conflict = adapter_version_conflict()
    if conflict is not None:
        logger.warning(conflict)
