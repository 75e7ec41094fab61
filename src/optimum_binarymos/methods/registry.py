"""The registry of quantization methods: what conversion, packing, byte counts, cards and the CLI ask of a method.

A method is one :class:`QuantizationMethod` subclass, instantiated once and registered with
:func:`register_method` (``optimum_binarymos.methods.binarymos`` and ``.ternary`` do so on import). Code that
handles "any method of this package" looks the method up here (by config, layer, ``quant_method`` or model) and
calls it, instead of testing types one method at a time; a new method is one new sub-package.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from torch import nn

#: A settings-table row of the model card: (setting, value).
Row = tuple[str, str]


class QuantizationMethod:
    """One quantization method of this package: its config, its layers, and what each generic step needs.

    Identity and layers:
        name: ``"BinaryMoS"`` or ``"ternary"``: messages, default card title, commit message.
        cli_name: ``--method`` value of the command line (``"binarymos"``, ``"ternary"``).
        quant_method: ``quant_method`` of ``config.json`` (the name transformers knows it by).
        config_class: its quantization config class.
        latent_layer, packed_layer: its trainable and inference layer classes.
        format_metadata_key, format_version: safetensors metadata key of the packed layout and its version.

    Model card text (the rest of the card is shared): :attr:`card`, the method's card module, with ``TAGS``,
    ``LAYER_KIND`` (``"1-bit"``), ``CONVERTED`` (``"binarized"``), ``FLOAT_PARTS``, ``DESCRIPTION``,
    ``SIZE_BASIS``, ``CITATION`` and the functions ``summary``, ``note`` and ``settings`` (rows before the
    converted layers and after the float dtype), which take the quantization config and the model's
    :class:`~optimum_binarymos.Footprint`; the attributes below read it.
    """

    name = ""
    cli_name = ""
    quant_method = ""
    config_class: type = object
    latent_layer: type[nn.Module] = nn.Module
    packed_layer: type[nn.Module] = nn.Module
    format_metadata_key = ""
    format_version = 1
    card: ModuleType

    tags = property(lambda self: self.card.TAGS)
    layer_kind = property(lambda self: self.card.LAYER_KIND)
    converted = property(lambda self: self.card.CONVERTED)
    float_parts = property(lambda self: self.card.FLOAT_PARTS)
    description = property(lambda self: self.card.DESCRIPTION)
    size_basis = property(lambda self: self.card.SIZE_BASIS)
    citation = property(lambda self: self.card.CITATION)

    def summary(self, config: Any, footprint: Any) -> str:
        return self.card.summary(config, footprint)

    def note(self, config: Any, footprint: Any) -> str:
        return self.card.note(config, footprint)

    def settings(self, config: Any, footprint: Any) -> tuple[list[Row], list[Row]]:
        return self.card.settings(config, footprint)

    @property
    def layer_types(self) -> tuple[type[nn.Module], type[nn.Module]]:
        """``(latent, packed)`` layer classes."""
        return self.latent_layer, self.packed_layer

    # ---- configs ------------------------------------------------------------------------------------------

    def describe(self, config: Any) -> str:
        """The config fields that decide packed shapes, for messages (``"num_experts=4"``)."""
        raise NotImplementedError

    # ---- layers -------------------------------------------------------------------------------------------

    def skeleton(
        self, in_features: int, out_features: int, bias: bool, config: Any, packed: bool, **factory: Any
    ) -> nn.Module:
        """An uninitialized latent (or ``packed``) layer; ``factory`` holds ``device`` and ``dtype``."""
        raise NotImplementedError

    def from_float(self, weight: torch.Tensor, bias: torch.Tensor | None, config: Any) -> nn.Module:
        """The latent layer initialized from a float ``(out, in)`` weight and its bias."""
        raise NotImplementedError

    def init_tensors(self, weight: torch.Tensor, layer: nn.Module, config: Any) -> dict[str, torch.Tensor]:
        """What loading a float checkpoint derives from each weight: the latent layer's tensors other than
        ``weight``, by name within the layer (``"scale_in"``)."""
        raise NotImplementedError

    def pack(self, latent: nn.Module, config: Any) -> nn.Module:
        """The packed layer computing what the latent ``latent`` computes."""
        raise NotImplementedError

    def pack_state_dict(
        self, state: dict[str, torch.Tensor], model: nn.Module, config: Any
    ) -> dict[str, torch.Tensor]:
        """A copy of ``state`` (``model``'s full state dict: its own, or one gathered from shards) with each
        latent layer's tensors in packed form; ``model`` only tells which names belong to which layer."""
        raise NotImplementedError

    def dense_weight(self, layer: nn.Module) -> torch.Tensor:
        """The ``(out, in)`` float32 weight ``layer`` multiplies its input by.

        Raises:
            ValueError: when no single float weight does (BinaryMoS with several experts).
        """
        raise NotImplementedError

    # ---- byte counts --------------------------------------------------------------------------------------

    def footprint_details(self, config: Any, first_layer: nn.Module) -> dict[str, Any]:
        """The :class:`~optimum_binarymos.Footprint` fields of this method (``num_experts``, ``group_size``...),
        from a converted (or to-be-converted) layer and the config."""
        raise NotImplementedError

    def layer_bytes(
        self, layer: nn.Module, in_features: int, out_features: int, details: dict[str, Any], float_bytes: int
    ) -> int:
        """Bytes of one packed layer's tensors other than its bias, float values at ``float_bytes`` each."""
        raise NotImplementedError

    def footprint_label(self, footprint: Any) -> str:
        """The conversion in a few words: ``"BinaryMoS (E=4)"``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<quantization method {self.name} ({self.quant_method!r})>"


_METHODS: dict[str, QuantizationMethod] = {}


def register_method(method: QuantizationMethod) -> QuantizationMethod:
    """Add ``method`` to the registry under its ``quant_method``; returns it."""
    existing = _METHODS.get(method.quant_method)
    if existing is not None and type(existing) is not type(method):
        raise ValueError(f"quant_method {method.quant_method!r} is already registered by {existing!r}")
    _METHODS[method.quant_method] = method
    return method


def registered_methods() -> tuple[QuantizationMethod, ...]:
    """Every registered method, in registration order."""
    return tuple(_METHODS.values())


def method_for_quant_method(quant_method: str | None) -> QuantizationMethod | None:
    """The method registered under ``quant_method`` (``"binarymos"``), else ``None``."""
    return _METHODS.get(quant_method)  # type: ignore[arg-type]


def method_for_config(config: Any) -> QuantizationMethod:
    """The method of a quantization config object.

    Raises:
        TypeError: for an object that is no registered method's config.
    """
    for method in _METHODS.values():
        if isinstance(config, method.config_class):
            return method
    known = " or ".join(method.config_class.__name__ for method in _METHODS.values())
    raise TypeError(f"expected a {known}, got {type(config).__name__}")


def method_for_layer(layer: nn.Module) -> QuantizationMethod | None:
    """The method whose latent or packed layer ``layer`` is, else ``None``."""
    for method in _METHODS.values():
        if isinstance(layer, method.layer_types):
            return method
    return None


def quantized_layer_types() -> tuple[type[nn.Module], ...]:
    """Every registered method's latent and packed layer classes."""
    return tuple(layer for method in _METHODS.values() for layer in method.layer_types)


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: layer}`` of every latent or packed layer of any registered method in ``model``."""
    types = quantized_layer_types()
    return {name: module for name, module in model.named_modules() if isinstance(module, types)}


def method_for_model(model: nn.Module) -> QuantizationMethod | None:
    """The method of a model's quantized layers (its first one), else ``None`` (a float model)."""
    for module in model.modules():
        method = method_for_layer(module)
        if method is not None:
            return method
    return None
