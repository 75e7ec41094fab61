"""How big a model is in float16 and as a packed BinaryMoS or ternary checkpoint, from its shapes alone.

The accounting is the papers' (and the layouts of ``docs/FORMAT.md`` and ``docs/FORMAT_TERNARY.md``): everything
that stays in float (embeddings, ``lm_head``, norms, layers kept in float) costs 2 bytes per value. In a converted
``(out, in)`` layer:

* BinaryMoS: a weight costs 1 bit, each row rounded up to whole bytes as the packed tensor ``(out, ceil(in / 8))``
  is; the scales ``(E, in) + (E, out)``, the router ``(E, in)`` (only when ``E > 1``) and the bias cost 2 bytes per
  value.
* Ternary: the trits cost ``(out, ceil(in / P))`` bytes, ``P = 4`` codes per byte (``"2bit"``) or ``5``
  (``"base3"``); the scale and shift ``(out, ceil(in / group_size))`` each and the bias cost 2 bytes per value.

Byte counts of packed tensors come from :mod:`optimum_binarymos.packing`, the one place that knows the layouts.

* :func:`estimate_footprint` takes a transformers config: the model is built on the meta device, so no weight is
  allocated or downloaded.
* :func:`model_footprint` measures a model you hold (float, latent or packed BinaryMoS, latent or packed ternary).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
from torch import nn

from .config import QUANT_METHOD, BinaryMoSConfig
from .nn.binarymos import BinaryMoSLinear, PackedBinaryMoSLinear
from .nn.ternary import PackedTernaryLinear, TernaryLinear
from .packing import CODE_PACKINGS, packed_columns, ternary_groups, ternary_packed_columns
from .replacement import QuantizationConfig, linear_dims, modules_to_convert
from .ternary_config import TERNARY_QUANT_METHOD, TernaryConfig

#: Bytes per value of everything kept in float, in the reference accounting (float16).
FLOAT16_BYTES = 2


@dataclass(frozen=True)
class Footprint:
    """Sizes of one model in float16 and as a packed BinaryMoS or ternary checkpoint, in bytes.

    Attributes:
        num_experts: scaling experts per converted BinaryMoS layer (``1`` = OneBit); ``None`` for ternary.
        parameters: parameters of the float model (tied weights counted once).
        binarized_weights: weights of the converted linear layers, stored at 1 bit (BinaryMoS) or as trits.
        float16_bytes: the whole float model in float16.
        packed_bytes: the whole packed model.
        linear_float16_bytes: the converted layers alone in float16 (weights and biases).
        linear_packed_bytes: the converted layers alone when packed (signs or trits, scales, router or shifts,
            biases).
        method: ``quant_method`` of the conversion: ``"binarymos"`` or ``"binarymos_ternary"``.
        group_size: ternary only: input columns per scale/shift group.
        code_packing: ternary only: ``"2bit"`` or ``"base3"``.
    """

    num_experts: int | None
    parameters: int
    binarized_weights: int
    float16_bytes: int
    packed_bytes: int
    linear_float16_bytes: int
    linear_packed_bytes: int
    method: str = QUANT_METHOD
    group_size: int | None = None
    code_packing: str | None = None

    @property
    def is_ternary(self) -> bool:
        return self.method == TERNARY_QUANT_METHOD

    @property
    def label(self) -> str:
        """The conversion in a few words: ``"BinaryMoS (E=4)"``, ``"ternary (2bit codes, group 128)"``."""
        if self.is_ternary:
            return f"ternary ({self.code_packing} codes, group {self.group_size})"
        return f"BinaryMoS (E={self.num_experts})"

    @property
    def ratio(self) -> float:
        """How many times smaller the packed model is than the float16 one."""
        return self.float16_bytes / self.packed_bytes

    @property
    def linear_ratio(self) -> float:
        """The same ratio for the converted layers alone."""
        return self.linear_float16_bytes / self.linear_packed_bytes

    @property
    def bits_per_parameter(self) -> float:
        """Average bits per parameter of the whole packed model (float parts included)."""
        return 8 * self.packed_bytes / self.parameters

    @property
    def bits_per_binarized_weight(self) -> float:
        """Average bits per weight of the converted layers, scales and router (or shifts) included."""
        return 8 * self.linear_packed_bytes / self.binarized_weights

    def __str__(self) -> str:
        return (
            f"float16 {format_bytes(self.float16_bytes)} -> {self.label} "
            f"{format_bytes(self.packed_bytes)}: {self.ratio:.2f}x smaller, "
            f"{self.bits_per_parameter:.2f} bits per parameter"
        )

    def to_markdown(self) -> str:
        """A markdown table: whole model and converted layers, float16 against packed."""
        method, converted = ("ternary", "ternarized") if self.is_ternary else ("BinaryMoS", "binarized")
        return "\n".join(
            [
                f"| | float16 | {method} (packed) | ratio |",
                "|---|---|---|---|",
                f"| whole model | {format_bytes(self.float16_bytes)} | {format_bytes(self.packed_bytes)} "
                f"| {self.ratio:.2f}x |",
                f"| {converted} linear layers | {format_bytes(self.linear_float16_bytes)} "
                f"| {format_bytes(self.linear_packed_bytes)} | {self.linear_ratio:.2f}x |",
                f"| bits per parameter | 16 | {self.bits_per_parameter:.2f} | |",
                f"| bits per {converted} weight | 16 | {self.bits_per_binarized_weight:.3f} | |",
            ]
        )


def format_bytes(size: int) -> str:
    """``1234567`` -> ``"1.23 MB"`` (decimal units, as the Hub shows file sizes)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def estimate_footprint(config, quantization_config: QuantizationConfig | None = None) -> Footprint:
    """Footprint of the causal LM that ``config`` describes, without weights and without downloading anything.

    Args:
        config: a transformers ``PretrainedConfig`` (e.g. ``AutoConfig.from_pretrained(model_id)`` or
            ``LlamaConfig(...)``). A packed checkpoint's config carries its own ``quantization_config``.
        quantization_config: the conversion to account for: a ``BinaryMoSConfig`` or a ``TernaryConfig``
            (its ``group_size`` and ``code_packing``); by default the config's own ``quantization_config`` if it
            has one, else ``BinaryMoSConfig()`` (4 experts).

    Example::

        >>> from transformers import LlamaConfig
        >>> llama_7b = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        ...                        num_attention_heads=32, vocab_size=32000)
        >>> round(estimate_footprint(llama_7b).ratio, 2)
        9.88
        >>> round(estimate_footprint(llama_7b, TernaryConfig(code_packing="base3")).ratio, 2)
        6.66
    """
    from transformers import AutoModelForCausalLM

    quantization_config = quantization_config or config_quantization(config) or BinaryMoSConfig()
    float_config = copy.deepcopy(config)
    if hasattr(float_config, "quantization_config"):
        # Build the float architecture; the accounting applies the conversion.
        del float_config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(float_config)
    return model_footprint(model, quantization_config)


def model_footprint(
    model: nn.Module,
    quantization_config: QuantizationConfig | None = None,
    float_bytes: int = FLOAT16_BYTES,
) -> Footprint:
    """Footprint of a model you hold: a float model (what converting it would give), or a converted model.

    Args:
        model: any module; its BinaryMoS or ternary layers (latent or packed) are the converted layers, or, for a
            float model, those :func:`~optimum_binarymos.modules_to_convert` selects.
        quantization_config: for a float model, the conversion to account for (default: the model config's own,
            else 4 BinaryMoS experts). For a ternary model, the ``code_packing`` to save with (default: that of
            its config, which ``save_pretrained`` uses). A BinaryMoS model's layers decide everything.
        float_bytes: bytes per float value; ``2`` is the reference accounting, the model's own element size
            gives the size of its checkpoint as saved.

    Raises:
        ValueError: when ``quantization_config`` is of another method than the model's converted layers.
    """
    converted = {name: module for name, module in model.named_modules() if isinstance(module, _LAYER_TYPES)}
    own_config = _model_quantization(model)
    if converted:
        ternary = isinstance(next(iter(converted.values())), _TERNARY_LAYER_TYPES)
        if quantization_config is not None and isinstance(quantization_config, TernaryConfig) != ternary:
            raise ValueError(
                f"{type(model).__name__} holds {'ternary' if ternary else 'BinaryMoS'} layers; its footprint "
                f"cannot be computed under a {type(quantization_config).__name__}"
            )
        config = quantization_config or own_config
    else:
        config = quantization_config or own_config or BinaryMoSConfig()
        names = modules_to_convert(model, config.modules_to_not_convert)
        converted = {name: model.get_submodule(name) for name in names}
        ternary = isinstance(config, TernaryConfig)

    if ternary:
        first = next(iter(converted.values()))
        group_size = getattr(first, "group_size", None) or config.group_size
        code_packing = _code_packing(config, first)
        layer_bytes = functools.partial(
            _ternary_layer_bytes, group_size=group_size, code_packing=code_packing, float_bytes=float_bytes
        )
        details = {
            "num_experts": None,
            "method": TERNARY_QUANT_METHOD,
            "group_size": group_size,
            "code_packing": code_packing,
        }
    else:
        num_experts = getattr(next(iter(converted.values())), "num_experts", None) or config.num_experts
        layer_bytes = functools.partial(_binary_layer_bytes, num_experts=num_experts, float_bytes=float_bytes)
        details = {"num_experts": num_experts}

    parameters = binarized = linear_float = linear_packed = other_float = other_packed = 0
    for module in converted.values():
        in_features, out_features, has_bias = _dims(module)
        bias = out_features if has_bias else 0
        weights = in_features * out_features
        parameters += weights + bias
        binarized += weights
        linear_float += (weights + bias) * FLOAT16_BYTES
        linear_packed += layer_bytes(module, in_features, out_features) + bias * float_bytes

    prefixes = tuple(f"{name}." for name in converted)
    seen: set[int] = set()
    for key, tensor in model.state_dict(keep_vars=True).items():
        if key.startswith(prefixes) or id(tensor) in seen:
            continue  # converted layers are counted above; tied weights once
        seen.add(id(tensor))
        parameters += tensor.numel()
        if tensor.is_floating_point():
            other_float += tensor.numel() * FLOAT16_BYTES
            other_packed += tensor.numel() * float_bytes
        else:
            other_float += tensor.numel() * tensor.element_size()
            other_packed += tensor.numel() * tensor.element_size()

    return Footprint(
        parameters=parameters,
        binarized_weights=binarized,
        float16_bytes=other_float + linear_float,
        packed_bytes=other_packed + linear_packed,
        linear_float16_bytes=linear_float,
        linear_packed_bytes=linear_packed,
        **details,
    )


_BINARY_LAYER_TYPES = (BinaryMoSLinear, PackedBinaryMoSLinear)
_TERNARY_LAYER_TYPES = (TernaryLinear, PackedTernaryLinear)
_LAYER_TYPES = _BINARY_LAYER_TYPES + _TERNARY_LAYER_TYPES


def _binary_layer_bytes(
    module: nn.Module, in_features: int, out_features: int, *, num_experts: int, float_bytes: int
) -> int:
    """Packed signs ``(out, ceil(in / 8))`` + scales ``(E, in) + (E, out)`` + router ``(E, in)`` if ``E > 1``."""
    experts = getattr(module, "num_experts", num_experts)
    router = experts * in_features if experts > 1 else 0
    scales = experts * (in_features + out_features)
    return out_features * packed_columns(in_features) + (scales + router) * float_bytes


def _ternary_layer_bytes(
    module: nn.Module,
    in_features: int,
    out_features: int,
    *,
    group_size: int,
    code_packing: str,
    float_bytes: int,
) -> int:
    """Packed codes ``(out, ceil(in / P))`` + scale and shift ``(out, ceil(in / group_size))`` each."""
    groups = ternary_groups(in_features, getattr(module, "group_size", group_size))
    codes = out_features * ternary_packed_columns(in_features, code_packing)
    return codes + 2 * out_features * groups * float_bytes


def _code_packing(config: QuantizationConfig | None, layer: nn.Module) -> str:
    """The code packing a ternary model saves with: its config's (``save_pretrained`` re-packs to it), else the
    packed layers' own, else the default."""
    if isinstance(config, TernaryConfig):
        return config.code_packing
    return getattr(layer, "code_packing", CODE_PACKINGS[0])


def _dims(module: nn.Module) -> tuple[int, int, bool]:
    if isinstance(module, _LAYER_TYPES):
        return module.in_features, module.out_features, module.bias is not None
    return linear_dims(module)


def _model_quantization(model: nn.Module) -> QuantizationConfig | None:
    """The quantization config a model saves with: its quantizer's, else its config's."""
    found = getattr(getattr(model, "hf_quantizer", None), "quantization_config", None)
    if isinstance(found, (BinaryMoSConfig, TernaryConfig)):
        return found
    return config_quantization(getattr(model, "config", None))


def config_quantization(config) -> QuantizationConfig | None:
    """The BinaryMoS or ternary ``quantization_config`` of a model config (object or saved dict), if it has one.

    Example::

        >>> config_quantization(AutoConfig.from_pretrained("smollm2-ternary")).code_packing
        'base3'
    """
    found = getattr(config, "quantization_config", None)
    if isinstance(found, (BinaryMoSConfig, TernaryConfig)):
        return found
    if isinstance(found, dict) and found.get("quant_method") == QUANT_METHOD:
        return BinaryMoSConfig.from_dict(found)
    if isinstance(found, dict) and found.get("quant_method") == TERNARY_QUANT_METHOD:
        return TernaryConfig.from_dict(found)
    return None
