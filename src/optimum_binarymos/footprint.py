"""How big a model is in float16 and as a packed BinaryMoS or ternary checkpoint, from its shapes alone.

The accounting is the papers' (and the layouts of ``docs/FORMAT.md`` and ``docs/FORMAT_TERNARY.md``): everything
that stays in float (embeddings, ``lm_head``, norms, layers kept in float) costs 2 bytes per value; with
``embedding_bits=8`` the embeddings and ``lm_head`` cost 1 byte per value plus one float scale per row, with ``4``
half a byte per value plus one float scale per 32 columns (a head tied to the embeddings shares their codes and
saves its own scales). In a converted ``(out, in)`` layer:

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
import math
from dataclasses import dataclass

import torch
from torch import nn

from .methods import method_for_config, method_for_layer, method_for_quant_method, quantized_layers
from .methods.binarymos import QUANT_METHOD, BinaryMoSConfig
from .methods.config_base import MethodConfig
from .methods.embeddings import embedding_module_names
from .methods.ternary import TERNARY_QUANT_METHOD
from .packing import row_layout_shapes
from .replacement import linear_dims, modules_to_convert

QuantizationConfig = MethodConfig

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
        embedding_bits: ``8`` or ``4`` when the embeddings and ``lm_head`` are counted in that row layout, else None.
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
    embedding_bits: int | None = None

    @property
    def is_ternary(self) -> bool:
        return self.method == TERNARY_QUANT_METHOD

    @property
    def label(self) -> str:
        """The conversion in a few words: ``"BinaryMoS (E=4)"``, ``"ternary (2bit codes, group 128)"``."""
        label = method_for_quant_method(self.method).footprint_label(self)
        return label + (f", {self.embedding_bits}-bit embeddings" if self.embedding_bits is not None else "")

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
        quantization = method_for_quant_method(self.method)
        method, converted = quantization.name, quantization.converted
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
    converted = quantized_layers(model)
    own_config = _model_quantization(model)
    if converted:
        method = method_for_layer(next(iter(converted.values())))
        if quantization_config is not None and method_for_config(quantization_config) is not method:
            raise ValueError(
                f"{type(model).__name__} holds {method.name} layers; its footprint "
                f"cannot be computed under a {type(quantization_config).__name__}"
            )
        config = quantization_config or own_config
    else:
        config = quantization_config or own_config or BinaryMoSConfig()
        names = modules_to_convert(model, config.modules_to_not_convert)
        converted = {name: model.get_submodule(name) for name in names}
        method = method_for_config(config)
    details = method.footprint_details(config, next(iter(converted.values())))

    parameters = binarized = linear_float = linear_packed = other_float = other_packed = 0
    for module in converted.values():
        in_features, out_features, has_bias = _dims(module)
        bias = out_features if has_bias else 0
        weights = in_features * out_features
        parameters += weights + bias
        binarized += weights
        linear_float += (weights + bias) * FLOAT16_BYTES
        linear_packed += method.layer_bytes(module, in_features, out_features, details, float_bytes)
        linear_packed += bias * float_bytes

    embedding_bits = getattr(config, "embedding_bits", None)
    row_quantized = set(embedding_module_names(model)) if embedding_bits is not None else set()
    prefixes = tuple(f"{name}." for name in converted)
    seen: set[int] = set()
    for key, tensor in model.state_dict(keep_vars=True).items():
        module_name, _, tensor_name = key.rpartition(".")
        if module_name in row_quantized and tensor_name in ("weight", "weight_scale"):
            if tensor_name == "weight":
                module = model.get_submodule(module_name)
                rows, columns = _matrix_shape(module)
                codes, codes_dtype, scales = row_layout_shapes(getattr(module, "bits", embedding_bits), rows, columns)
                other_packed += math.prod(scales) * float_bytes  # saved per module even when the codes are tied
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    parameters += rows * columns
                    other_float += rows * columns * FLOAT16_BYTES
                    other_packed += math.prod(codes) * codes_dtype.itemsize
            continue
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
        embedding_bits=embedding_bits,
        **details,
    )


def _matrix_shape(module: nn.Module) -> tuple[int, int]:
    """``(rows, columns)`` of an embedding table or an output head's weight, float or quantized."""
    if hasattr(module, "num_embeddings"):
        return module.num_embeddings, module.embedding_dim
    return module.out_features, module.in_features


def _dims(module: nn.Module) -> tuple[int, int, bool]:
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return module.in_features, module.out_features, module.bias is not None
    return linear_dims(module)


def _model_quantization(model: nn.Module) -> QuantizationConfig | None:
    """The quantization config a model saves with: its quantizer's, else its config's."""
    found = getattr(getattr(model, "hf_quantizer", None), "quantization_config", None)
    if isinstance(found, MethodConfig):
        return found
    return config_quantization(getattr(model, "config", None))


def config_quantization(config) -> QuantizationConfig | None:
    """The BinaryMoS or ternary ``quantization_config`` of a model config (object or saved dict), if it has one.

    Example::

        >>> config_quantization(AutoConfig.from_pretrained("smollm2-ternary")).code_packing
        'base3'
    """
    found = getattr(config, "quantization_config", None)
    if isinstance(found, MethodConfig):
        return found
    method = method_for_quant_method(found.get("quant_method")) if isinstance(found, dict) else None
    return method.config_class.from_dict(found) if method is not None else None
