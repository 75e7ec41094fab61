"""LoRA on BinaryMoS (and ternary) layers with plain peft: QLoRA-style fine-tuning of a 1-bit model.

Once :func:`register_lora_layers` has run (``import optimum_binarymos`` arranges it), peft's LoRA wraps every
layer listed in :data:`SUPPORTED_BASE_LAYERS` in :class:`BinaryMoSLoraLinear`::

    y = base(x) + lora_B(lora_A(dropout(x))) * scaling        # base frozen: packed bits, scales, router

so the usual calls work unchanged on packed (and latent) BinaryMoS models::

    from peft import LoraConfig, PeftModel, get_peft_model

    model = get_peft_model(model, LoraConfig(target_modules=lora_target_modules(model)))
    model.save_pretrained("adapter")                           # LoRA weights only
    model = PeftModel.from_pretrained(base_model, "adapter")   # also model.add_adapter(...) / load_adapter(...)

Why the registration wraps peft's dispatch instead of registering with each ``LoraConfig``: peft's per-config custom-module
mapping (``LoraConfig._register_custom_module``) is not saved in ``adapter_config.json`` and is absent from any
config built before this package was imported; choosing the LoRA layer by the type of the wrapped module, at the
moment peft builds it, covers every config however it was made.

Merging is refused: these layers keep only quantized weight values (1-bit signs, or ternary trits) under their
scales, so a float low-rank update cannot be folded into them. Run the adapter unmerged.
"""

from __future__ import annotations

import functools
import logging

from peft.tuners.lora import LoraConfig, LoraModel
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from ..nn.binarymos import BinaryMoSLinear, PackedBinaryMoSLinear
from ..nn.ternary import PackedTernaryLinear, TernaryLinear

logger = logging.getLogger(__name__)

__all__ = [
    "SUPPORTED_BASE_LAYERS",
    "BinaryMoSLoraLinear",
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

# Marks the peft methods wrapped here, so that registering twice wraps once.
_WRAPPED_MARK = "_optimum_binarymos_dispatch"


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
    return (
        f"Cannot merge LoRA adapter(s) {adapter_names} into {type(base_layer).__name__}: the layer stores only "
        "quantized weight values (1-bit signs for BinaryMoS, whose scales change with every token; trits for "
        "ternary) and a float low-rank update B @ A cannot be folded into them (re-quantizing W + B @ A would "
        "throw most of the adapter away). "
        "Keep the adapter unmerged: the PeftModel runs as it is, saves the adapter with save_pretrained(), and "
        "unload() returns the base model without it."
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


def create_lora_module(
    target: nn.Module, adapter_name: str, config: LoraConfig, **kwargs
) -> nn.Module | None:
    """peft-style dispatch function: a :class:`BinaryMoSLoraLinear` when ``target`` (or the layer it wraps) is a
    supported BinaryMoS layer, else ``None`` (peft's own dispatchers decide)."""
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if not isinstance(base, SUPPORTED_BASE_LAYERS):
        return None
    custom = config._custom_modules or {}
    if any(isinstance(base, layer_type) for layer_type in custom):
        return None  # the user registered their own LoRA layer for this type: peft's dispatch honours it
    return BinaryMoSLoraLinear(target, adapter_name, config=config, **kwargs)


def register_lora_layers() -> None:
    """Make peft's LoRA wrap BinaryMoS layers in :class:`BinaryMoSLoraLinear`, for every ``LoraConfig``.

    Wraps two ``LoraModel`` methods, once (calling this again does nothing):

    * ``_create_new_module``, peft's dispatch from a target module to its LoRA layer, so that
      :func:`create_lora_module` is asked first;
    * ``_check_merge_allowed``, which ``merge_and_unload()`` and ``merge_adapter()`` run before touching any
      layer, so that a model holding BinaryMoS LoRA layers refuses as a whole instead of half-merging the
      float layers (an adapted ``embed_tokens``, say) that come before the first BinaryMoS one.

    Normally run for you: ``import optimum_binarymos`` calls :func:`optimum_binarymos.integrations.register_peft`,
    which imports this module once peft is imported.
    """
    dispatch = LoraModel._create_new_module
    if not getattr(dispatch, _WRAPPED_MARK, False):

        @functools.wraps(dispatch)
        def _create_new_module(lora_config, adapter_name, target, **kwargs):
            new_module = create_lora_module(target, adapter_name, lora_config, **kwargs)
            if new_module is not None:
                return new_module
            return dispatch(lora_config, adapter_name, target, **kwargs)

        setattr(_create_new_module, _WRAPPED_MARK, True)
        LoraModel._create_new_module = staticmethod(_create_new_module)

    check_merge = LoraModel._check_merge_allowed
    if not getattr(check_merge, _WRAPPED_MARK, False):

        @functools.wraps(check_merge)
        def _check_merge_allowed(self):
            check_merge(self)
            for module in self.model.modules():
                if isinstance(module, BinaryMoSLoraLinear):
                    raise ValueError(merge_refusal(module.get_base_layer(), list(module.active_adapters)))

        setattr(_check_merge_allowed, _WRAPPED_MARK, True)
        LoraModel._check_merge_allowed = _check_merge_allowed
    logger.debug("peft LoRA now wraps %s", ", ".join(layer.__name__ for layer in SUPPORTED_BASE_LAYERS))


# Importing this module is what enables LoRA on BinaryMoS layers (``import optimum_binarymos`` imports it as soon
# as peft is imported); registering is idempotent.
register_lora_layers()
